"""Caffe's upgrades of old net and solver definitions (caffe/util/upgrade_proto.cpp), step by step.

Nets, in Caffe's order (`upgrade_net_as_needed`):

1. V0 (`layers { layer { type: "conv" kernelsize: 5 ... } }`, Caffe before 2014) -> V1: "padding"
   layers fold into the convolution or pooling that reads them; each V0 field goes to its V1
   parameter message for the layer types Caffe maps it for (`V0_FIELDS`); a field set on another
   type is a problem ("Unknown parameter pad for layer type relu"), which Caffe logs and skips.
2. V1 data layers' scale / mean_file / crop_size / mirror move into transform_param.
3. V1 (`layers { type: CONVOLUTION blobs_lr: 1 ... }`) -> current `layer` with string types.
4. `input` / `input_shape` / `input_dim` -> an Input layer named "input", first in the net.
5. BatchNorm layers with three `param` specs get lr_mult and decay_mult 0.

Solvers: the `solver_type` enum becomes the `type` string.

Every step logs Caffe's lines (logger `sec.caffe.upgrade_proto`: INFO, WARNING, ERROR as Caffe's).
Problems Caffe only logs come back as a list (the upgrade tools exit 1 on them); what Caffe
refuses with LOG(FATAL) raises UpgradeError. Messages carry the file (`source`).
"""
import logging

from sec.proto import caffe_pb2

log = logging.getLogger(__name__)

V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION", "data": "DATA",
    "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS", "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA",
    "hdf5_output": "HDF5_OUTPUT", "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN", "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS",
    "pool": "POOLING", "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}
_CONV_IP = ("conv", "innerproduct")
_DATA4 = {"data": "data_param", "hdf5_data": "hdf5_data_param", "images": "image_data_param",
          "window_data": "window_data_param"}
# V0 field -> (name in Caffe's messages, {V0 type: "v1_param_message.field"}); message-valued and
# repeated targets are copied / appended.
V0_FIELDS = {
    "num_output": ("num_output", {t: f"{p}.num_output" for t, p in zip(_CONV_IP, ("convolution_param",
                                                                                   "inner_product_param"))}),
    "biasterm": ("biasterm", {t: f"{p}.bias_term" for t, p in zip(_CONV_IP, ("convolution_param",
                                                                              "inner_product_param"))}),
    "weight_filler": ("weight_filler", {t: f"{p}.weight_filler" for t, p in
                                        zip(_CONV_IP, ("convolution_param", "inner_product_param"))}),
    "bias_filler": ("bias_filler", {t: f"{p}.bias_filler" for t, p in
                                    zip(_CONV_IP, ("convolution_param", "inner_product_param"))}),
    "pad": ("pad", {"conv": "convolution_param.pad", "pool": "pooling_param.pad"}),
    "kernelsize": ("kernelsize", {"conv": "convolution_param.kernel_size", "pool": "pooling_param.kernel_size"}),
    "group": ("group", {"conv": "convolution_param.group"}),
    "stride": ("stride", {"conv": "convolution_param.stride", "pool": "pooling_param.stride"}),
    "pool": ("pool", {"pool": "pooling_param.pool"}),     # the enums share their values
    "dropout_ratio": ("dropout_ratio", {"dropout": "dropout_param.dropout_ratio"}),
    "local_size": ("local_size", {"lrn": "lrn_param.local_size"}),
    "alpha": ("alpha", {"lrn": "lrn_param.alpha"}),
    "beta": ("beta", {"lrn": "lrn_param.beta"}),
    "k": ("k", {"lrn": "lrn_param.k"}),
    "source": ("source", {**{t: f"{p}.source" for t, p in _DATA4.items()},
                          "infogain_loss": "infogain_loss_param.source"}),
    "batchsize": ("batchsize", {t: f"{p}.batch_size" for t, p in _DATA4.items()}),
    "rand_skip": ("rand_skip", {"data": "data_param.rand_skip", "images": "image_data_param.rand_skip"}),
    "shuffle_images": ("shuffle", {"images": "image_data_param.shuffle"}),
    "new_height": ("new_height", {"images": "image_data_param.new_height"}),
    "new_width": ("new_width", {"images": "image_data_param.new_width"}),
    "concat_dim": ("concat_dim", {"concat": "concat_param.concat_dim"}),
    "det_fg_threshold": ("det_fg_threshold", {"window_data": "window_data_param.fg_threshold"}),
    "det_bg_threshold": ("det_bg_threshold", {"window_data": "window_data_param.bg_threshold"}),
    "det_fg_fraction": ("det_fg_fraction", {"window_data": "window_data_param.fg_fraction"}),
    "det_context_pad": ("det_context_pad", {"window_data": "window_data_param.context_pad"}),
    "det_crop_mode": ("det_crop_mode", {"window_data": "window_data_param.crop_mode"}),
    "hdf5_output_param": ("hdf5_output_param", {"hdf5_output": "hdf5_output_param"}),
}
# V0 fields that go to transform_param whatever the layer type.
V0_TRANSFORM_FIELDS = {"scale": "scale", "meanfile": "mean_file", "cropsize": "crop_size", "mirror": "mirror"}
V1_TYPE_NAMES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# Every `*_param` of V1LayerParameter carries over unchanged (same message types).
V1_COPIED_PARAMS = tuple(field.name for field in caffe_pb2.V1LayerParameter.DESCRIPTOR.fields
                         if field.name.endswith("_param"))
# Legacy data-layer fields Caffe moves into transform_param, and the V1 types (with their parameter).
LEGACY_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
LEGACY_TRANSFORM_LAYERS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                           "WINDOW_DATA": "window_data_param"}
LEGACY_AXES = 4
BATCHNORM_LEGACY_PARAMS = 3
SOLVER_TYPE_NAMES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad",
                     "RMSPROP": "RMSProp", "ADADELTA": "AdaDelta", "ADAM": "Adam"}


class UpgradeError(ValueError):
    """A definition Caffe refuses to upgrade (its LOG(FATAL)); the message names the file."""


def _v1_type(layer):
    return caffe_pb2.V1LayerParameter.LayerType.Name(layer.type)


# ---------------------------------------------------------------- what needs upgrading

def net_needs_v0_upgrade(net):
    return any(layer.HasField("layer") for layer in net.layers)


def net_needs_data_upgrade(net):
    return any(_v1_type(layer) in LEGACY_TRANSFORM_LAYERS
               and any(getattr(layer, LEGACY_TRANSFORM_LAYERS[_v1_type(layer)]).HasField(f)
                       for f in LEGACY_TRANSFORM_FIELDS)
               for layer in net.layers if layer.HasField("type"))


def net_needs_batchnorm_upgrade(net):
    return any(layer.type == "BatchNorm" and len(layer.param) == BATCHNORM_LEGACY_PARAMS for layer in net.layer)


def net_needs_upgrade(net):
    """Caffe's NetNeedsUpgrade: any of the five steps has work."""
    return (net_needs_v0_upgrade(net) or bool(net.layers) or net_needs_data_upgrade(net) or bool(net.input)
            or net_needs_batchnorm_upgrade(net))


# ---------------------------------------------------------------- the whole chain

def upgrade_net_as_needed(net, source, inputs=True):
    """Caffe's UpgradeNetAsNeeded on `net` (in place); returns the problems it logged (empty when
    fully compatible). `inputs=False` skips step 4 (sec.caffe's Net reads the legacy input fields
    itself)."""
    problems = []
    if net_needs_v0_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated V0LayerParameter: %s", source)
        found = upgrade_v0_net(net, source)
        if found:
            log.error("Warning: had one or more problems upgrading V0NetParameter to NetParameter (see above); "
                      "continuing anyway.")
        else:
            log.info("Successfully upgraded file specified using deprecated V0LayerParameter")
        log.warning("Note that future Caffe releases will not support V0NetParameter; use "
                    "./build/tools/upgrade_net_proto_text for prototxt and ./build/tools/upgrade_net_proto_binary "
                    "for model weights upgrade this and any other net protos to the new format.")
        problems += found
    if net_needs_data_upgrade(net):
        log.info("Attempting to upgrade input file specified using deprecated transformation parameters: %s",
                 source)
        for layer in net.layers:
            field = LEGACY_TRANSFORM_LAYERS.get(_v1_type(layer)) if layer.HasField("type") else None
            if field:
                _move_legacy_transform(getattr(layer, field), layer.transform_param)
        log.info("Successfully upgraded file specified using deprecated data transformation parameters.")
        log.warning("Note that future Caffe releases will only support transform_param messages for "
                    "transformation fields.")
    if net.layers:
        log.info("Attempting to upgrade input file specified using deprecated V1LayerParameter: %s", source)
        upgrade_v1_net(net, source)
        log.info("Successfully upgraded file specified using deprecated V1LayerParameter")
    if inputs and net.input:
        log.info("Attempting to upgrade input file specified using deprecated input fields: %s", source)
        upgrade_net_input(net, source)
        log.info("Successfully upgraded file specified using deprecated input fields.")
        log.warning("Note that future Caffe releases will only support input layers and not input fields.")
    if net_needs_batchnorm_upgrade(net):
        log.info("Attempting to upgrade batch norm layers using deprecated params: %s", source)
        for layer in net.layer:
            if layer.type == "BatchNorm" and len(layer.param) == BATCHNORM_LEGACY_PARAMS:
                for spec in layer.param:
                    spec.lr_mult, spec.decay_mult = 0.0, 0.0
        log.info("Successfully upgraded batch norm layers using deprecated params.")
    return problems


# ---------------------------------------------------------------- V0 -> V1

def upgrade_v0_net(net, source):
    """Caffe's UpgradeV0Net in place: padding layers folded, V0 layers -> V1; only name, input,
    input_dim and force_backward of the net are kept. Returns the problems (logged as errors)."""
    padded = _fold_v0_padding(net, source)
    kept = {field: getattr(net, field) for field in ("name", "force_backward") if net.HasField(field)}
    inputs, dims = list(net.input), list(net.input_dim)
    net.Clear()
    for field, value in kept.items():
        setattr(net, field, value)
    problems = []
    for connection in padded:
        problems += _upgrade_v0_layer(connection, net.layers.add(), source)
    net.input.extend(inputs)
    net.input_dim.extend(dims)
    return problems


def _fold_v0_padding(net, source):
    """Caffe's UpgradeV0PaddingLayers: the V1 connections without "padding" layers, each conv /
    pool that read a padding layer's top given its pad and reading the padding layer's bottom."""
    last_top = {name: None for name in net.input}      # blob -> index of the layer that wrote it last
    kept = []
    for index, connection in enumerate(net.layers):
        v0 = connection.layer
        if v0.type != "padding":
            kept.append(caffe_pb2.V1LayerParameter.FromString(connection.SerializeToString()))
        for j, blob in enumerate(connection.bottom):
            if blob not in last_top:
                raise UpgradeError(f"{source}: unknown blob input '{blob}' to layer '{v0.name}' (bottom {j})")
            writer = last_top[blob]
            if writer is None or net.layers[writer].layer.type != "padding":
                continue
            padding = net.layers[writer]
            if v0.type not in ("conv", "pool"):
                raise UpgradeError(f"{source}: padding layer input to non-convolutional / non-pooling layer "
                                   f"'{v0.name}' of type {v0.type}")
            if len(connection.bottom) != 1 or len(padding.bottom) != 1 or len(padding.top) != 1:
                raise UpgradeError(f"{source}: layer '{v0.name}' and its padding layer '{padding.layer.name}' "
                                   "must each take a single blob (and the padding layer produce one)")
            kept[-1].layer.pad = padding.layer.pad
            kept[-1].bottom[j] = padding.bottom[0]
        for blob in connection.top:
            last_top[blob] = index
    return kept


def _upgrade_v0_layer(connection, v1, source):
    """Caffe's UpgradeV0LayerParameter: one V0 layer into the V1 layer `v1`; returns problems."""
    v1.bottom.extend(connection.bottom)
    v1.top.extend(connection.top)
    if not connection.HasField("layer"):
        return []
    v0 = connection.layer
    if v0.HasField("name"):
        v1.name = v0.name
    kind = v0.type
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            raise UpgradeError(f"{source}: layer '{v0.name}': unknown V0 layer type '{kind}'")
        v1.type = caffe_pb2.V1LayerParameter.LayerType.Value(V0_TYPES[kind])
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    problems = []
    for field, (caffe_name, targets) in V0_FIELDS.items():
        if not v0.HasField(field):
            continue
        target = targets.get(kind)
        if target is None:
            problem = f"{source}: layer '{v0.name}': Unknown parameter {caffe_name} for layer type {kind}"
            log.error("Unknown parameter %s for layer type %s", caffe_name, kind)
            problems.append(problem)
            continue
        _assign(v1, target, getattr(v0, field))
    for field, transform_field in V0_TRANSFORM_FIELDS.items():
        if v0.HasField(field):
            setattr(v1.transform_param, transform_field, getattr(v0, field))
    return problems


def _assign(message, dotted, value):
    """message.<a>.<b> = value: appended to a repeated field, copied into a message field."""
    *path, name = dotted.split(".")
    for part in path:
        message = getattr(message, part)
    target = getattr(message, name)
    if hasattr(target, "CopyFrom"):
        target.CopyFrom(value)
    elif hasattr(target, "append"):
        target.append(value)
    else:
        setattr(message, name, value)


# ---------------------------------------------------------------- V1 -> current

def _move_legacy_transform(data_param, transform_param):
    for name in LEGACY_TRANSFORM_FIELDS:
        if data_param.HasField(name):
            setattr(transform_param, name, getattr(data_param, name))
            data_param.ClearField(name)


def upgrade_v1_net(net, source):
    """Caffe's UpgradeV1Net in place: V1 `layers` -> `layer` (types as strings, blobs_lr /
    weight_decay / param names / share modes as ParamSpecs, every sub-parameter kept)."""
    if net.layer:
        raise UpgradeError(f"{source}: mixes legacy 'layers' and current 'layer' entries; Caffe refuses to "
                           "upgrade it: switch the definition to 'layer' entries")
    legacy = list(net.layers)
    net.ClearField("layers")
    for v1 in legacy:
        _upgrade_v1_layer(v1, net.layer.add())


def _upgrade_v1_layer(v1, layer):
    if v1.HasField("name"):
        layer.name = v1.name
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[_v1_type(v1)]
    layer.blobs.extend(v1.blobs)

    def param(i):
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        param(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        param(i).share_mode = mode  # V1 and ParamSpec enums share their values
    for i, lr in enumerate(v1.blobs_lr):
        param(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        param(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for field in V1_COPIED_PARAMS:
        if v1.HasField(field):
            getattr(layer, field).CopyFrom(getattr(v1, field))


# ---------------------------------------------------------------- inputs, solvers

def upgrade_net_input(net, source):
    """Caffe's UpgradeNetInput: the input fields become the tops of an Input layer "input", the
    net's first layer (a legacy caffemodel's bare `input` names are just dropped)."""
    if net.input_shape or net.input_dim:
        if net.input_dim and len(net.input_dim) < LEGACY_AXES * len(net.input):
            raise UpgradeError(f"{source}: {len(net.input)} 'input' names need {LEGACY_AXES * len(net.input)} "
                               f"'input_dim' values, got {len(net.input_dim)}")
        if net.input_shape and len(net.input_shape) < len(net.input):
            raise UpgradeError(f"{source}: {len(net.input)} 'input' names but {len(net.input_shape)} "
                               "'input_shape' entries")
        layer = caffe_pb2.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            layer.top.append(name)
            shape = layer.input_param.shape.add()
            if net.input_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[LEGACY_AXES * i:LEGACY_AXES * (i + 1)])
        layers = [layer] + list(net.layer)
        net.ClearField("layer")
        net.layer.extend(layers)
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def upgrade_solver_as_needed(solver, source):
    """Caffe's UpgradeSolverAsNeeded: `solver_type` (enum) -> `type` (string), in place; True when
    something was upgraded. Both given is refused (UpgradeError), as Caffe's CHECK does."""
    if not solver.HasField("solver_type"):
        return False
    log.info("Attempting to upgrade input file specified using deprecated 'solver_type' field (enum)': %s",
             source)
    if solver.HasField("type"):
        raise UpgradeError(f"{source}: Failed to upgrade solver: old solver_type field (enum) and new type "
                           "field (string) cannot be both specified in solver proto text.")
    solver.type = SOLVER_TYPE_NAMES[caffe_pb2.SolverParameter.SolverType.Name(solver.solver_type)]
    solver.ClearField("solver_type")
    log.info("Successfully upgraded file specified using deprecated 'solver_type' field (enum) to 'type' "
             "field (string).")
    log.warning("Note that future Caffe releases will only support 'type' field (string) for a solver's type.")
    return True
