// The extension is imported as fcn_fast._C; importing it runs the TORCH_LIBRARY_FRAGMENT /
// TORCH_LIBRARY_IMPL registrations of every op. Its one attribute, with_cuda, says whether
// this build has the CUDA kernels (fcn_fast/_backend.py reads it).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
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
