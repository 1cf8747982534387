// Operator schemas of the `maskrcnn_benchmark` library: every op is declared here, once. Each
// backend registers its kernels with TORCH_LIBRARY_IMPL(maskrcnn_benchmark, <key>, m), one file
// per op and backend: csrc/cpu/*.cpp (CPU, always built), csrc/cuda/*.cu (CUDA, built only with
// MASKRCNN_BENCHMARK_CUDA_KERNELS=1, see setup.py) and csrc/autocast/autocast_kernels.cpp
// (Autocast / AutocastCPU: run the ops in float32 under mixed precision).
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
  // Modulated deformable convolution (DCNv2), see csrc/deform_conv_geometry.h for the layouts.
  m.def(
      "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor? bias, "
      "int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, "
      "int groups, int deformable_groups) -> Tensor");
  // Gradients (input, weight, offset, mask, bias) of deform_conv2d given grad_out.
  m.def(
      "_deform_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, Tensor offset, "
      "Tensor mask, int stride_h, int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, "
      "int groups, int deformable_groups) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Winograd F(m x m, 3 x 3) transforms of the 3x3 / stride 1 / padding 1 convolution (CPU only:
  // layers/winograd.py runs them on CPU float32 tensors; cuDNN has its own Winograd kernels).
  // input [N, C, H, W] -> V [a * a, T, C] (a = BT.size(0) = m + 2, T = N * ceil(H / m) * ceil(W / m)).
  m.def("winograd_input_transform(Tensor input, Tensor BT) -> Tensor");
  // M [a * a, T, K] -> Y [N, K, H, W] (+ bias; channels-last memory format) with AT [m, a].
  m.def("winograd_output_transform(Tensor M, Tensor AT, Tensor? bias, int N, int H, int W) -> Tensor");
  // Gradient of winograd_output_transform's M given grad_Y [N, K, H, W]: [a * a, T, K].
  m.def("winograd_output_transform_backward(Tensor grad, Tensor AT) -> Tensor");
}
