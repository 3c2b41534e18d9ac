// The extension is imported as fcn_fast._C; importing it runs the
// TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL registrations of every op.
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
