"""The one mapping from a prototxt layer `type` to its implementation class.

Each class is built as ``cls(layer_param, bottom_shapes, build_context)``; base.py says what it
provides. The modules follow Caffe's layer families: vision (and vision_pooling), neuron, common,
utility (and utility_select), loss (and loss_distance), recurrent, data (and data_arrays); python:
`type: "Python"` layers, with sec_twins for SEC's own.
"""
from sec.caffe.layers import (common, data, data_arrays, loss, loss_distance, neuron, recurrent, utility,
                              utility_select, vision, vision_pooling)
from sec.caffe.layers.sec_twins import python_layer

LAYER_TYPES = {
    # data
    "Input": data.Input,
    "Data": data.Data,
    "ImageData": data.ImageData,
    "DummyData": data.DummyData,
    "HDF5Data": data_arrays.HDF5Data,
    "HDF5Output": data_arrays.HDF5Output,
    "MemoryData": data_arrays.MemoryData,
    "WindowData": data.WindowData,
    # vision
    "Convolution": vision.Convolution,
    "Deconvolution": vision.Deconvolution,
    "Pooling": vision_pooling.Pooling,
    "LRN": vision.LRN,
    "Im2col": vision.Im2col,
    "SPP": vision_pooling.SPP,
    "Crop": vision.Crop,
    # neuron
    "ReLU": neuron.ReLU,
    "Sigmoid": neuron.Sigmoid,
    "TanH": neuron.TanH,
    "Dropout": neuron.Dropout,
    "AbsVal": neuron.AbsVal,
    "BNLL": neuron.BNLL,
    "Clip": neuron.Clip,
    "ELU": neuron.ELU,
    "Exp": neuron.Exp,
    "Log": neuron.Log,
    "Power": neuron.Power,
    "PReLU": neuron.PReLU,
    "Swish": neuron.Swish,
    "Threshold": neuron.Threshold,
    # common
    "InnerProduct": common.InnerProduct,
    "BatchNorm": common.BatchNorm,
    "Scale": common.Scale,
    "Bias": common.Bias,
    "Softmax": common.Softmax,
    "MVN": common.MVN,
    "Embed": common.Embed,
    # utility
    "Concat": utility.Concat,
    "Eltwise": utility.Eltwise,
    "Split": utility.Split,
    "Flatten": utility.Flatten,
    "Reshape": utility.Reshape,
    "Silence": utility.Silence,
    "Slice": utility.Slice,
    "Tile": utility.Tile,
    "Reduction": utility.Reduction,
    "Parameter": utility.Parameter,
    "ArgMax": utility_select.ArgMax,
    "BatchReindex": utility_select.BatchReindex,
    "Filter": utility_select.Filter,
    # loss
    "SoftmaxWithLoss": loss.SoftmaxWithLoss,
    "SigmoidCrossEntropyLoss": loss.SigmoidCrossEntropyLoss,
    "Accuracy": loss.Accuracy,
    "InfogainLoss": loss.InfogainLoss,
    "MultinomialLogisticLoss": loss.MultinomialLogisticLoss,
    "EuclideanLoss": loss_distance.EuclideanLoss,
    "HingeLoss": loss_distance.HingeLoss,
    "ContrastiveLoss": loss_distance.ContrastiveLoss,
    # recurrent
    "RNN": recurrent.RNN,
    "LSTM": recurrent.LSTM,
    "LSTMUnit": recurrent.LSTMUnit,
    # python
    "Python": python_layer,
}
