// Operator schemas of the `maskrcnn_benchmark` library. Backends register kernels with
// TORCH_LIBRARY_IMPL(maskrcnn_benchmark, CPU|CUDA, m) in csrc/cpu/ and csrc/cuda/; other files may
// add operators with TORCH_LIBRARY_FRAGMENT(maskrcnn_benchmark, m).
#include <Python.h>
#include <torch/library.h>

// `import maskrcnn_benchmark._C` loads this shared library, which runs the registrations below.
// The module itself is empty: operators are reached through torch.ops.maskrcnn_benchmark.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(maskrcnn_benchmark, m) {
  // Fake (meta) kernels and autograd formulas are registered in Python by this module.
  m.set_python_module("maskrcnn_benchmark.layers._ops");
  // Greedy NMS; indices of kept boxes in decreasing score order (stable for ties).
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  // Class-aware NMS: boxes with different idxs never suppress each other.
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  // Pairwise IoU matrix [N, M].
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
  // Element-wise sigmoid focal loss [N, C]; targets 1..C positive class, 0 background, -1 ignore.
  m.def("sigmoid_focal_loss(Tensor logits, Tensor targets, float gamma, float alpha) -> Tensor");
  m.def(
      "sigmoid_focal_loss_backward(Tensor grad_output, Tensor logits, Tensor targets, float gamma, "
      "float alpha) -> Tensor");
}
