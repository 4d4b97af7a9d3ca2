"""pycaffe's `caffe.draw`: a NetParameter as a Graphviz graph (layers as boxes, blobs as octagons).

Needs pydot (or pydotplus, which pycaffe tries first) and Graphviz's `dot` program to render:
`pip install pydot`, `apt-get install graphviz`. Without pydot, importing this module raises
ImportError saying so, as pycaffe's does.

    from caffe.proto import caffe_pb2
    caffe.draw.draw_net_to_file(net_param, "net.png", rankdir="LR", phase=caffe.TEST)
"""
try:
    import pydotplus as pydot
except ImportError:
    try:
        import pydot
    except ImportError as err:
        raise ImportError("caffe.draw needs pydot (pip install pydot; pycaffe also accepts pydotplus) and "
                          "Graphviz's dot program (apt-get install graphviz)") from err

from sec.proto import caffe_pb2

LAYER_STYLE_DEFAULT = {"shape": "record", "fillcolor": "#6495ED", "style": "filled"}
NEURON_LAYER_STYLE = {"shape": "record", "fillcolor": "#90EE90", "style": "filled"}
BLOB_STYLE = {"shape": "octagon", "fillcolor": "#E0E0E0", "style": "filled"}
LAYER_COLORS = {"Convolution": "#FF5050", "Deconvolution": "#FF5050", "Pooling": "#FF9900",
                "InnerProduct": "#CC33FF"}
LEARNING_LAYERS = ("Convolution", "Deconvolution", "InnerProduct")
SPATIAL_LAYERS = ("Convolution", "Deconvolution", "Pooling")
EMPTY_LABEL = '""'


def get_pooling_types_dict():
    """{pooling method number: name}, e.g. {0: 'MAX', 1: 'AVE', 2: 'STOCHASTIC'}."""
    return {value.number: name for name, value in caffe_pb2.PoolingParameter.PoolMethod.DESCRIPTOR.values_by_name.items()}


def get_edge_label(layer):
    """The label of a layer's top edges: the batch size of Data, num_output of Convolution,
    Deconvolution and InnerProduct, else empty."""
    if layer.type == "Data":
        return f"Batch {layer.data_param.batch_size}"
    if layer.type in ("Convolution", "Deconvolution"):
        return str(layer.convolution_param.num_output)
    if layer.type == "InnerProduct":
        return str(layer.inner_product_param.num_output)
    return EMPTY_LABEL


def get_layer_lr_mult(layer):
    """(weight lr_mult, bias lr_mult) of a Convolution, Deconvolution or InnerProduct layer (1 unset);
    ValueError for other types or more than two param specs."""
    if layer.type not in LEARNING_LAYERS:
        raise ValueError(f"{layer.type} layers do not have a learning rate multiplier")
    specs = list(layer.param)
    if len(specs) > 2:
        raise ValueError("Could not parse the learning rate multiplier")
    mults = [spec.lr_mult for spec in specs] + [1.0] * (2 - len(specs))
    return tuple(mults)


def get_layer_label(layer, rankdir, display_lrm=False):
    """The node label: name, (type [pooling method]), kernel/stride/pad of spatial layers and, with
    display_lrm, the lr multipliers; words on lines for LR graphs, on one line for TB/BT. Quoted."""
    separator = " " if rankdir in ("TB", "BT") else r"\n"
    parts = [layer.name]
    if layer.type == "Pooling":
        parts.append(f"({layer.type} {get_pooling_types_dict()[layer.pooling_param.pool]})")
    else:
        parts.append(f"({layer.type})")
    if layer.type in SPATIAL_LAYERS:
        if layer.type == "Pooling":
            p = layer.pooling_param
            kernel, stride, pad = p.kernel_size, p.stride, p.pad
        else:
            p = layer.convolution_param
            kernel = p.kernel_size[0] if len(p.kernel_size) else 1
            stride = p.stride[0] if len(p.stride) else 1
            pad = p.pad[0] if len(p.pad) else 0
        parts.append(separator.join([f"kernel size: {kernel}", f"stride: {stride}", f"pad: {pad}"]))
    if display_lrm and layer.type in LEARNING_LAYERS:
        weight_mult, bias_mult = get_layer_lr_mult(layer)
        if weight_mult or bias_mult:
            parts.append(f"lr mult: {weight_mult:.1f}, {bias_mult:.1f}")
    return '"%s"' % separator.join(parts)   # quoted, or Graphviz misreads the colons


def choose_color_by_layertype(layertype):
    """Fill colour of a layer's node."""
    return LAYER_COLORS.get(layertype, LAYER_STYLE_DEFAULT["fillcolor"])


def _included(layer, phase):
    """pycaffe's phase filter: no include rule, or an include of that phase, and no such exclude."""
    if layer.include and layer.exclude:
        raise ValueError(f"layer {layer.name} has both include and exclude specified.")
    included = not layer.include or any(rule.phase == phase for rule in layer.include)
    return included and not any(rule.phase == phase for rule in layer.exclude)


def get_pydot_graph(caffe_net, rankdir, label_edges=True, phase=None, display_lrm=False):
    """A pydot graph of `caffe_net` (a NetParameter): layers of `phase` (None: all), edges blob ->
    layer -> blob; in-place neuron layers drawn in green."""
    graph = pydot.Dot(caffe_net.name or "Net", graph_type="digraph", rankdir=rankdir)
    nodes, edges = {}, []
    for layer in caffe_net.layer:
        if phase is not None and not _included(layer, phase):
            continue
        label = get_layer_label(layer, rankdir, display_lrm=display_lrm)
        node_name = f"{layer.name}_{layer.type}"
        in_place = len(layer.bottom) == 1 and len(layer.top) == 1 and layer.bottom[0] == layer.top[0]
        style = NEURON_LAYER_STYLE if in_place else dict(LAYER_STYLE_DEFAULT,
                                                         fillcolor=choose_color_by_layertype(layer.type))
        nodes[node_name] = pydot.Node(label, **style)
        for bottom in layer.bottom:
            nodes[bottom + "_blob"] = pydot.Node(bottom, **BLOB_STYLE)
            edges.append((bottom + "_blob", node_name, EMPTY_LABEL))
        for top in layer.top:
            nodes[top + "_blob"] = pydot.Node(top)
            edges.append((node_name, top + "_blob", get_edge_label(layer) if label_edges else EMPTY_LABEL))
    for node in nodes.values():
        graph.add_node(node)
    for source, target, label in edges:
        graph.add_edge(pydot.Edge(nodes[source], nodes[target], label=label))
    return graph


def draw_net(caffe_net, rankdir, ext="png", phase=None, display_lrm=False):
    """The rendered graph as bytes in format `ext` (Graphviz's dot renders it)."""
    return get_pydot_graph(caffe_net, rankdir, phase=phase, display_lrm=display_lrm).create(format=ext)


def draw_net_to_file(caffe_net, filename, rankdir="LR", phase=None, display_lrm=False):
    """Render to `filename`, the format from its extension ('.raw': the dot source)."""
    ext = filename[filename.rfind(".") + 1:]
    with open(filename, "wb") as handle:
        handle.write(draw_net(caffe_net, rankdir, ext, phase, display_lrm))
