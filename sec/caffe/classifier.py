"""pycaffe's `caffe.Classifier`: a TEST-phase Net that classifies images (H x W x K arrays, as
`caffe.io.load_image` gives them), scaling them to `image_dims`, then taking the centre crop or
oversampling (4 corners + centre, and their mirrors, predictions averaged)."""
import numpy as np

from sec.caffe import io as caffe_io
from sec.caffe.layers.base import TEST
from sec.caffe.net import Net


def configure_transformer(net, mean=None, input_scale=None, raw_scale=None, channel_swap=None):
    """The Transformer of the net's first input: H x W x K -> K x H x W, then the given steps."""
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """`Classifier(model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
    raw_scale=None, channel_swap=None)`; image_dims defaults to the input's H x W."""

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None, input_scale=None,
                 raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = self.crop_dims if image_dims is None or not len(image_dims) else image_dims

    def predict(self, inputs, oversample=True):
        """N x classes probabilities (the first output) of the images `inputs`: oversampled and
        averaged over the 10 crops, or of the centre crop."""
        input_ = np.zeros((len(inputs), self.image_dims[0], self.image_dims[1], inputs[0].shape[2]),
                          dtype=np.float32)
        for index, image in enumerate(inputs):
            input_[index] = caffe_io.resize_image(image, self.image_dims)
        if oversample:
            input_ = caffe_io.oversample(input_, self.crop_dims)
        else:
            center = np.array(self.image_dims) / 2.0
            crop = np.concatenate([center - self.crop_dims / 2.0, center + self.crop_dims / 2.0]).astype(int)
            input_ = input_[:, crop[0]:crop[2], crop[1]:crop[3], :]
        caffe_in = np.zeros(np.array(input_.shape)[[0, 3, 1, 2]], dtype=np.float32)
        for index, image in enumerate(input_):
            caffe_in[index] = self.transformer.preprocess(self.inputs[0], image)
        predictions = self.forward_all(**{self.inputs[0]: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // caffe_io.OVERSAMPLE_CROPS,
                                               caffe_io.OVERSAMPLE_CROPS, -1)).mean(1)
        return predictions
