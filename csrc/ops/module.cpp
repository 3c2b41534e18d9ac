// The extension is imported as fcn_fast._C; importing it runs the TORCH_LIBRARY_FRAGMENT /
// TORCH_LIBRARY_IMPL registrations of every op. Its attributes:
//   with_cuda   whether this build has the CUDA kernels (fcn_fast/_backend.py reads it);
//   <op>(...)   a direct binding of each public op fcn_fast::<op>, positional arguments in
//               schema order, for fcn_fast/_backend.py's extension_op.
//
// Why the bindings: torch.ops.fcn_fast.<op>(...) converts every argument to an IValue
// through the schema and calls the op boxed, about 8 us of host time a call, more than a
// small step's whole kernel (issue 8's tiny-shape rows). A binding converts its arguments
// straight to the C++ types and calls the same dispatcher entry unboxed, so autograd, the
// backend kernels and every dispatch key behave exactly as through torch.ops. extension_op
// still takes torch.ops under torch.compile and for arguments with __torch_function__.
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/string_view.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <tuple>
#include <utility>

#include "pixel_cross_entropy.h"
#include "resample_cross_entropy.h"
#include "resample_skip.h"

namespace fcn_fast {
namespace {

[[noreturn]] void fail_argument(const char* op, Py_ssize_t index, const char* expected,
                                PyObject* got) {
  TORCH_CHECK_TYPE(false, "fcn_fast._C.", op, ": argument ", index, " must be ", expected, ", got ",
                   Py_TYPE(got)->tp_name);
}

// ArgFrom<T>::get(op, i, obj): Python argument i of `op` as the C++ parameter type T.
template <typename T>
struct ArgFrom;

template <>
struct ArgFrom<const at::Tensor&> {
  static const at::Tensor& get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!THPVariable_Check(obj)) fail_argument(op, i, "a Tensor", obj);
    return THPVariable_Unpack(obj);
  }
};

template <>
struct ArgFrom<const std::optional<at::Tensor>&> {
  static std::optional<at::Tensor> get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (obj == Py_None) return std::nullopt;
    return ArgFrom<const at::Tensor&>::get(op, i, obj);
  }
};

template <>
struct ArgFrom<double> {
  static double get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!PyFloat_Check(obj) && !PyLong_Check(obj)) fail_argument(op, i, "a float", obj);
    const double value = PyFloat_AsDouble(obj);
    if (value == -1.0 && PyErr_Occurred()) throw python_error();
    return value;
  }
};

template <>
struct ArgFrom<int64_t> {
  static int64_t get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!PyLong_Check(obj) || PyBool_Check(obj)) fail_argument(op, i, "an int", obj);
    const long long value = PyLong_AsLongLong(obj);
    if (value == -1 && PyErr_Occurred()) throw python_error();
    return value;
  }
};

// The output sizes are SymInts in the schemas (for traced dynamic shapes); here they are ints.
template <>
struct ArgFrom<c10::SymInt> {
  static c10::SymInt get(const char* op, Py_ssize_t i, PyObject* obj) {
    return c10::SymInt(ArgFrom<int64_t>::get(op, i, obj));
  }
};

template <>
struct ArgFrom<bool> {
  static bool get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!PyBool_Check(obj)) fail_argument(op, i, "a bool", obj);
    return obj == Py_True;
  }
};

template <>
struct ArgFrom<c10::string_view> {
  // The view lives as long as the Python str, which outlives the call.
  static c10::string_view get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!PyUnicode_Check(obj)) fail_argument(op, i, "a str", obj);
    Py_ssize_t size = 0;
    const char* text = PyUnicode_AsUTF8AndSize(obj, &size);
    if (text == nullptr) throw python_error();
    return c10::string_view(text, static_cast<size_t>(size));
  }
};

template <>
struct ArgFrom<at::ScalarType> {
  static at::ScalarType get(const char* op, Py_ssize_t i, PyObject* obj) {
    if (!THPDtype_Check(obj)) fail_argument(op, i, "a torch.dtype", obj);
    return reinterpret_cast<THPDtype*>(obj)->scalar_type;
  }
};

PyObject* to_python(at::Tensor tensor) {
  PyObject* obj = THPVariable_Wrap(std::move(tensor));
  if (obj == nullptr) throw python_error();
  return obj;
}

template <typename... Tensors>
PyObject* to_python(std::tuple<Tensors...> tensors) {
  THPObjectPtr tuple(PyTuple_New(sizeof...(Tensors)));
  if (!tuple) throw python_error();
  Py_ssize_t i = 0;
  std::apply(
      [&](auto&... t) { (PyTuple_SET_ITEM(tuple.get(), i++, to_python(std::move(t))), ...); },
      tensors);
  return tuple.release();
}

template <typename Signature>
struct Binding;

template <typename Return, typename... Params>
struct Binding<Return(Params...)> {
  static constexpr size_t arity = sizeof...(Params);

  // Every argument converted while holding the GIL, the op called without it (as torch.ops
  // does: a long kernel must not stop the other Python threads, e.g. a DataLoader's).
  template <size_t... I>
  static PyObject* call(const char* op, const c10::TypedOperatorHandle<Return(Params...)>& handle,
                        PyObject* const* args, std::index_sequence<I...>) {
    std::tuple<std::decay_t<decltype(ArgFrom<Params>::get(op, I, args[I]))>...> converted{
        ArgFrom<Params>::get(op, I, args[I])...};
    Return result = [&] {
      pybind11::gil_scoped_release no_gil;
      return handle.call(std::get<I>(converted)...);
    }();
    return to_python(std::move(result));
  }
};

// fcn_fast._C.<Name>(*args): the op fcn_fast::<Name> with the C++ signature Signature.
template <const char* Name, typename Signature>
PyObject* bound_op(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  static const auto handle = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow((std::string("fcn_fast::") + Name).c_str(), "")
                                 .typed<Signature>();
  constexpr size_t arity = Binding<Signature>::arity;
  TORCH_CHECK_TYPE(nargs == static_cast<Py_ssize_t>(arity), "fcn_fast._C.", Name, " takes ", arity,
                   " positional arguments, got ", nargs);
  return Binding<Signature>::call(Name, handle, args, std::make_index_sequence<arity>{});
  END_HANDLE_TH_ERRORS
}

constexpr char kResampleSkip[] = "resample_skip";
constexpr char kPixelCrossEntropy[] = "pixel_cross_entropy";
constexpr char kResampleCrossEntropy[] = "resample_cross_entropy";
constexpr char kResampleArgmax[] = "resample_argmax";

template <const char* Name, typename Signature>
constexpr PyMethodDef method() {
  return {Name,
          reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&bound_op<Name, Signature>)),
          METH_FASTCALL, nullptr};
}

PyMethodDef methods[] = {
    method<kResampleSkip, ResampleSkipSignature>(),
    method<kPixelCrossEntropy, PixelCrossEntropySignature>(),
    method<kResampleCrossEntropy, ResampleCrossEntropySignature>(),
    method<kResampleArgmax, ResampleArgmaxSignature>(),
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace
}  // namespace fcn_fast

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                          fcn_fast::methods};
  PyObject* module = PyModule_Create(&module_def);
#ifdef FCN_FAST_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (module != nullptr && PyModule_AddIntConstant(module, "with_cuda", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}
