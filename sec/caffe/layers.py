"""The one mapping from a prototxt layer `type` to its implementation class.

Each class is built as ``cls(layer_param, bottom_shapes, build_context)``; see
sec/caffe/layers_common.py for what it provides.
"""
from sec.caffe import layers_basic as basic
from sec.caffe import layers_loss as loss
from sec.caffe import layers_vision as vision
from sec.caffe.layers_sec import python_layer

LAYER_TYPES = {
    "Input": basic.Input,
    "ImageData": loss.ImageData,
    "Convolution": vision.Convolution,
    "Deconvolution": vision.Deconvolution,
    "Pooling": vision.Pooling,
    "LRN": vision.LRN,
    "InnerProduct": vision.InnerProduct,
    "ReLU": basic.ReLU,
    "Sigmoid": basic.Sigmoid,
    "TanH": basic.TanH,
    "Dropout": basic.Dropout,
    "BatchNorm": basic.BatchNorm,
    "Scale": basic.Scale,
    "Bias": basic.Bias,
    "Softmax": basic.Softmax,
    "SoftmaxWithLoss": loss.SoftmaxWithLoss,
    "SigmoidCrossEntropyLoss": loss.SigmoidCrossEntropyLoss,
    "Accuracy": loss.Accuracy,
    "Concat": basic.Concat,
    "Eltwise": basic.Eltwise,
    "Split": basic.Split,
    "Flatten": basic.Flatten,
    "Reshape": basic.Reshape,
    "Silence": basic.Silence,
    "Python": python_layer,
}

