"""The one mapping from a prototxt layer `type` to its implementation class.

Each class is built as ``cls(layer_param, bottom_shapes, build_context)``; base.py says what it
provides. The modules follow Caffe's layer families: vision, neuron, common, utility, loss, data (and
python: `type: "Python"` layers, with sec_twins for SEC's own).
"""
from sec.caffe.layers import common, data, loss, neuron, utility, vision
from sec.caffe.layers.sec_twins import python_layer

LAYER_TYPES = {
    # data
    "Input": data.Input,
    "ImageData": data.ImageData,
    "DummyData": data.DummyData,
    # vision
    "Convolution": vision.Convolution,
    "Deconvolution": vision.Deconvolution,
    "Pooling": vision.Pooling,
    "LRN": vision.LRN,
    # neuron
    "ReLU": neuron.ReLU,
    "Sigmoid": neuron.Sigmoid,
    "TanH": neuron.TanH,
    "Dropout": neuron.Dropout,
    # common
    "InnerProduct": common.InnerProduct,
    "BatchNorm": common.BatchNorm,
    "Scale": common.Scale,
    "Bias": common.Bias,
    "Softmax": common.Softmax,
    # utility
    "Concat": utility.Concat,
    "Eltwise": utility.Eltwise,
    "Split": utility.Split,
    "Flatten": utility.Flatten,
    "Reshape": utility.Reshape,
    "Silence": utility.Silence,
    # loss
    "SoftmaxWithLoss": loss.SoftmaxWithLoss,
    "SigmoidCrossEntropyLoss": loss.SigmoidCrossEntropyLoss,
    "Accuracy": loss.Accuracy,
    # python
    "Python": python_layer,
}
