"""One-layer nets of Caffe's vision layers for bench/caffe_reference.py (--only layers_vision):
Im2col, SPP, Crop, the MAX pooling mask top (and first-maximum ties), N-D Convolution and
Deconvolution (1, 3 and 4 spatial axes, 0 with the channel axis last) and their `axis`.
STOCHASTIC pooling has no case: Caffe runs it only on the GPU (this Caffe is a CPU build)."""
import numpy as np

from caffe_reference_cases import conv, pool

X = (2, 3, 5, 6)


def _ties(rng, shape):
    """Small integers: windows often hold their maximum twice (Caffe keeps the first)."""
    return rng.integers(0, 3, shape).astype(np.float32)


INPUT_KINDS = {"ties": _ties}
MASK = {"tops": ("y", "mask")}


def crop(param, like):
    return (("Crop", param), {"x": ((2, 3, 6, 7), "randn"), "like": (like, "randn")}, {"bottoms": ("x", "like")})


CASES = {
    "vision_im2col": (("Im2col", "convolution_param { kernel_size: 3 pad: 1 stride: 2 }"), {"x": (X, "randn")}, {}),
    "vision_im2col_rect_dilation": (("Im2col", "convolution_param { kernel_h: 2 kernel_w: 3 pad_h: 1 pad_w: 0 "
                                     "stride_h: 1 stride_w: 2 dilation: 2 }"), {"x": ((2, 2, 6, 7), "randn")}, {}),
    "vision_im2col_1d": (("Im2col", "convolution_param { kernel_size: 3 pad: 1 stride: 2 }"),
                         {"x": ((2, 3, 7), "randn")}, {}),
    "vision_im2col_3d_axis2": (("Im2col", "convolution_param { axis: 2 kernel_size: 2 kernel_size: 1 kernel_size: 2 "
                                "stride: 1 stride: 1 stride: 2 pad: 1 pad: 0 pad: 0 }"),
                               {"x": ((2, 2, 2, 3, 2, 5), "randn")}, {}),
    "vision_conv_1d": (conv("kernel_size: 3 stride: 2 pad: 1 dilation: 1"), {"x": ((2, 3, 9), "randn")}, {}),
    "vision_conv_3d": (conv("kernel_size: 3 kernel_size: 2 kernel_size: 3 pad: 1 pad: 0 pad: 1 stride: 1 stride: 2 "
                            "stride: 1 dilation: 1 dilation: 1 dilation: 2 group: 2"),
                       {"x": ((1, 2, 4, 5, 6), "randn")}, {}),
    "vision_conv_4d": (conv("kernel_size: 2 stride: 1 pad: 1 pad: 0 pad: 0 pad: 1", n=3),
                       {"x": ((1, 2, 3, 3, 2, 2), "randn")}, {}),
    "vision_conv_no_spatial_axis": (conv("axis: -1 kernel_size: 1 group: 3", n=6), {"x": ((2, 4, 3), "randn")}, {}),
    "vision_conv_axis2": (conv("axis: 2 kernel_size: 3 pad: 1"), {"x": ((2, 2, 3, 4, 5), "randn")}, {}),
    "vision_deconv_1d": (conv("kernel_size: 4 stride: 2 pad: 1", "Deconvolution", 2), {"x": ((2, 3, 5), "randn")}, {}),
    "vision_deconv_3d": (conv("kernel_size: 2 stride: 2 stride: 1 stride: 2 group: 2", "Deconvolution"),
                         {"x": ((1, 4, 3, 2, 3), "randn")}, {}),
    "vision_deconv_4d": (conv("kernel_size: 2 stride: 2 pad: 1 pad: 0 pad: 0 pad: 1 dilation: 1", "Deconvolution", 2),
                         {"x": ((1, 2, 2, 3, 2, 2), "randn")}, {}),
    "vision_deconv_axis2": (conv("axis: 2 kernel_size: 3 stride: 2", "Deconvolution", 2),
                            {"x": ((2, 2, 3, 3, 2), "randn")}, {}),
    "vision_crop_default": crop("", (2, 3, 4, 5)),
    "vision_crop_one_offset": crop("crop_param { offset: 1 }", (2, 3, 4, 5)),
    "vision_crop_per_axis": crop("crop_param { axis: 1 offset: 1 offset: 2 offset: 0 }", (2, 2, 3, 5)),
    "vision_crop_axis0_negative": crop("crop_param { axis: -4 offset: 1 }", (1, 2, 5, 5)),
    "vision_spp_max_3": (("SPP", "spp_param { pyramid_height: 3 }"), {"x": ((2, 3, 7, 9), "randn")}, {}),
    "vision_spp_ave_2": (("SPP", "spp_param { pyramid_height: 2 pool: AVE }"), {"x": ((2, 2, 5, 6), "randn")}, {}),
    "vision_spp_height_1": (("SPP", "spp_param { pyramid_height: 1 }"), {"x": ((2, 3, 4, 5), "randn")}, {}),
    "vision_pool_max_mask": (pool("pool: MAX kernel_size: 3 stride: 2 pad: 1"), {"x": ((2, 3, 7, 8), "randn")}, MASK),
    "vision_pool_max_mask_wide_pad": (pool("pool: MAX kernel_size: 4 stride: 3 pad: 3"),
                                      {"x": ((2, 3, 7, 7), "randn")}, MASK),
    "vision_pool_max_mask_rect": (pool("pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0"),
                                  {"x": ((1, 2, 6, 5), "randn")}, MASK),
    "vision_pool_max_mask_ties": (pool("pool: MAX kernel_size: 3 stride: 2"), {"x": ((2, 3, 7, 8), "ties")}, MASK),
    "vision_pool_max_global_mask_ties": (pool("pool: MAX global_pooling: true"), {"x": ((2, 3, 4, 5), "ties")}, MASK),
    "vision_pool_max_ties": (pool("pool: MAX kernel_size: 2 stride: 1"), {"x": ((2, 3, 5, 6), "ties")}, {}),
}
