"""pycaffe's `caffe.net_spec`: write a net as Python calls, get its NetParameter.

    from caffe import layers as L, params as P       # or sec.caffe.net_spec
    n = caffe.NetSpec()
    n.data, n.label = L.DummyData(shape=[dict(dim=[8, 1, 28, 28]), dict(dim=[8])], ntop=2)
    n.conv = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"))
    n.pool = L.Pooling(n.conv, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu = L.ReLU(n.pool, in_place=True)
    text = str(n.to_proto())                           # prototxt text, parses back to the same net

`L.<Type>(*bottoms, **fields)` makes a `Function` (one layer) and returns its one `Top`, its tuple of
tops (`ntop=k`) or the Function itself (`ntop=0`). Keyword fields go into the layer's own
`<type>_param` message when it has that field, else onto the LayerParameter (`loss_weight`, `param`,
`include`, `*_param=dict(...)`); `in_place=True` makes the tops the bottoms. Lists become repeated
fields, dicts messages. Names: a NetSpec's attribute names name the tops and the layers that make them;
anything unnamed gets `<Type><k>` (k counting per type), as pycaffe does.
"""
from collections import Counter, OrderedDict

from sec.proto import caffe_pb2

PARAM_SUFFIX = "_param"
MESSAGE_SUFFIX = "Parameter"


def param_name_dict():
    """{layer type: its LayerParameter field prefix}, e.g. 'Convolution' -> 'convolution', found from
    the fields named `<x>_param` whose message is `<Type>Parameter` (pycaffe's own rule: so
    Deconvolution, whose field is convolution_param, needs `convolution_param=dict(...)`)."""
    names = {}
    for field in caffe_pb2.LayerParameter.DESCRIPTOR.fields:
        if field.name.endswith(PARAM_SUFFIX) and field.message_type is not None:
            type_name = field.message_type.name
            if type_name.endswith(MESSAGE_SUFFIX):
                names[type_name[:-len(MESSAGE_SUFFIX)]] = field.name[:-len(PARAM_SUFFIX)]
    return names


def to_proto(*tops):
    """A NetParameter holding every layer needed to compute `tops` (names generated)."""
    layers = OrderedDict()
    autonames = Counter()
    for top in tops:
        top.fn._to_proto(layers, {}, autonames)
    net = caffe_pb2.NetParameter()
    net.layer.extend(layers.values())
    return net


def assign_proto(proto, name, val):
    """Set field `name` of message `proto` from a Python value: a dict fills a message, a list a
    repeated field (dicts in it add messages), a scalar is assigned; a scalar given to a repeated
    field is made a one-element list (`kernel_size=3`)."""
    field = getattr(proto, name)
    if hasattr(field, "extend") and not isinstance(val, list):
        val = [val]
    if isinstance(val, list):
        if val and isinstance(val[0], dict):
            for item in val:
                message = field.add()
                for key, value in item.items():
                    assign_proto(message, key, value)
        else:
            field.extend(val)
    elif isinstance(val, dict):
        for key, value in val.items():
            assign_proto(field, key, value)
    else:
        setattr(proto, name, val)


class Top:
    """Output `n` of the layer `fn` (a Function)."""

    def __init__(self, fn, n):
        self.fn = fn
        self.n = n

    def to_proto(self):
        """A NetParameter with every layer needed to compute this top."""
        return to_proto(self)

    def _to_proto(self, layers, names, autonames):
        return self.fn._to_proto(layers, names, autonames)


class Function:
    """One layer: its type, its input Tops and its fields (`params`, the keyword arguments less
    `ntop` and `in_place`)."""

    def __init__(self, type_name, inputs, params):
        self.type_name = type_name
        for index, value in enumerate(inputs):
            if not isinstance(value, Top):
                raise TypeError(f"{type_name} input {index} is not a Top (type is {type(value)})")
        self.inputs = inputs
        self.params = params
        self.ntop = self.params.pop("ntop", 1)
        self.in_place = self.params.pop("in_place", False)
        self.tops = tuple(Top(self, n) for n in range(self.ntop))

    def _get_name(self, names, autonames):
        if self not in names:
            if self.ntop > 0:
                names[self] = self._get_top_name(self.tops[0], names, autonames)
            else:
                autonames[self.type_name] += 1
                names[self] = f"{self.type_name}{autonames[self.type_name]}"
        return names[self]

    def _get_top_name(self, top, names, autonames):
        if top not in names:
            autonames[top.fn.type_name] += 1
            names[top] = f"{top.fn.type_name}{autonames[top.fn.type_name]}"
        return names[top]

    def _to_proto(self, layers, names, autonames):
        if self in layers:
            return
        bottoms = []
        for top in self.inputs:
            top._to_proto(layers, names, autonames)
            bottoms.append(layers[top.fn].top[top.n])
        layer = caffe_pb2.LayerParameter()
        layer.type = self.type_name
        layer.bottom.extend(bottoms)
        if self.in_place:
            layer.top.extend(layer.bottom)
        else:
            layer.top.extend(self._get_top_name(top, names, autonames) for top in self.tops)
        layer.name = self._get_name(names, autonames)
        for key, value in self.params.items():
            self._assign(layer, key, value)
        layers[self] = layer

    def _assign(self, layer, key, value):
        """`key` into the layer's own <type>_param when that message has it, else onto the layer
        (pycaffe's order; a key that neither has raises AttributeError)."""
        if not key.endswith("param"):
            prefix = _PARAM_NAMES.get(self.type_name)
            if prefix is not None:
                message = getattr(layer, prefix + PARAM_SUFFIX)
                if key in message.DESCRIPTOR.fields_by_name:
                    assign_proto(message, key, value)
                    return
        assign_proto(layer, key, value)


class NetSpec:
    """Tops assigned as attributes (or items) by name; `to_proto()` gives the NetParameter of every
    layer they need, tops and layers named after the attributes."""

    def __init__(self):
        object.__setattr__(self, "tops", OrderedDict())

    def __setattr__(self, name, value):
        self.tops[name] = value

    def __getattr__(self, name):
        try:
            return self.tops[name]
        except KeyError:
            raise AttributeError(f"NetSpec has no top named '{name}'") from None

    def __setitem__(self, key, value):
        self.tops[key] = value

    def __getitem__(self, item):
        return self.tops[item]

    def to_proto(self):
        names = {top: name for name, top in self.tops.items()}
        autonames = Counter()
        layers = OrderedDict()
        for top in self.tops.values():
            top._to_proto(layers, names, autonames)
        net = caffe_pb2.NetParameter()
        net.layer.extend(layers.values())
        return net


class Layers:
    """`layers.<Type>(*bottoms, **fields)`: a layer of that type (see the module docstring)."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)

        def layer_fn(*args, **kwargs):
            fn = Function(type_name, args, kwargs)
            if fn.ntop == 0:
                return fn
            if fn.ntop == 1:
                return fn.tops[0]
            return fn.tops
        return layer_fn


class _EnumValues:
    """`params.<Type>.<VALUE>`: the constant <VALUE> of caffe_pb2.<Type>Parameter."""

    def __init__(self, type_name):
        self._message = getattr(caffe_pb2, type_name + MESSAGE_SUFFIX)

    def __getattr__(self, value_name):
        return getattr(self._message, value_name)


class Parameters:
    """`params.Pooling.MAX` is caffe_pb2.PoolingParameter.MAX."""

    def __getattr__(self, type_name):
        if type_name.startswith("__"):
            raise AttributeError(type_name)
        return _EnumValues(type_name)


_PARAM_NAMES = param_name_dict()
layers = Layers()
params = Parameters()
