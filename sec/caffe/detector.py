"""pycaffe's `caffe.Detector`: a TEST-phase Net that classifies windows of images (R-CNN style),
warping each window (plus an optional `context_pad` border of context, padded with the mean where
it leaves the image) to the net's input size.

Windows are (ymin, xmin, ymax, xmax) in pixels. detect_selective_search needs the external
`selective_search_ijcv_with_python` package, as in pycaffe."""
import os

import numpy as np

from sec.caffe import io as caffe_io
from sec.caffe.classifier import configure_transformer
from sec.caffe.layers.base import TEST
from sec.caffe.net import Net


class Detector(Net):
    """`Detector(model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
    channel_swap=None, context_pad=None)`."""

    def __init__(self, model_file, pretrained_file, mean=None, input_scale=None, raw_scale=None,
                 channel_swap=None, context_pad=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        self.transformer = configure_transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows):
        """[{'window', 'prediction', 'filename'}] for each window of each (image file, windows) pair."""
        images_windows = list(images_windows)
        window_inputs = []
        for image_fname, windows in images_windows:
            image = caffe_io.load_image(image_fname).astype(np.float32)
            window_inputs.extend(self.crop(image, window) for window in windows)
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(window_inputs), window_inputs[0].shape[2]) + tuple(self.blobs[in_].data.shape[2:]),
                            dtype=np.float32)
        for index, window_in in enumerate(window_inputs):
            caffe_in[index] = self.transformer.preprocess(in_, window_in)
        predictions = iter(self.forward_all(**{in_: caffe_in})[self.outputs[0]])
        return [{"window": window, "prediction": next(predictions), "filename": image_fname}
                for image_fname, windows in images_windows for window in windows]

    def detect_selective_search(self, image_fnames):
        """detect_windows over Selective Search proposals (needs selective_search_ijcv_with_python)."""
        import selective_search_ijcv_with_python as selective_search
        image_fnames = [os.path.abspath(f) for f in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(zip(image_fnames, windows_list))

    def crop(self, im, window):
        """The window of H x W x K image `im`; with context_pad, the window grown so that a border of
        context_pad pixels of the net's input is context, warped and placed on the mean."""
        crop = im[window[0]:window[2], window[1]:window[3]]
        if not self.context_pad:
            return crop
        box = np.array(window, dtype=float)
        crop_size = self.blobs[self.inputs[0]].width   # assumes a square input, as pycaffe
        scale = crop_size / (1. * crop_size - self.context_pad * 2)
        half_h = (box[2] - box[0] + 1) / 2.
        half_w = (box[3] - box[1] + 1) / 2.
        center = (box[0] + half_h, box[1] + half_w)
        box = np.round(np.tile(center, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h = crop_size / (box[2] - box[0] + 1)
        scale_w = crop_size / (box[3] - box[1] + 1)
        pad_y = int(round(max(0, -box[0]) * scale_h))   # how far the box leaves the image
        pad_x = int(round(max(0, -box[1]) * scale_w))
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0., [im_h, im_w, im_h, im_w])
        clip_h = box[2] - box[0] + 1
        clip_w = box[3] - box[1] + 1
        if not (clip_h > 0 and clip_w > 0):
            raise ValueError(f"window {window} lies outside the {im_h} x {im_w} image")
        crop_h = min(int(round(clip_h * scale_h)), crop_size - pad_y)
        crop_w = min(int(round(clip_w * scale_w)), crop_size - pad_x)
        # pycaffe slices with the float box, which numpy no longer accepts: the same bounds as ints
        y0, x0, y1, x1 = (int(v) for v in box)
        context_crop = caffe_io.resize_image(im[y0:y1, x0:x1], (crop_h, crop_w))
        crop = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        crop[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = context_crop
        return crop

    def configure_crop(self, context_pad):
        """crop_dims (the input as H x W x K) and, with context_pad, crop_mean: the mean in image
        space (undoing transpose, channel swap and raw scale) to pad context crops with."""
        in_ = self.inputs[0]
        tpose = self.transformer.transpose[in_]
        inv_tpose = [tpose[t] for t in tpose]   # pycaffe's formula: the inverse for (2, 0, 1)
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inv_tpose]
        self.context_pad = context_pad
        if not self.context_pad:
            return
        channel_order = self.transformer.channel_swap.get(in_)
        raw_scale = self.transformer.raw_scale.get(in_)
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inv_tpose)
        if channel_order is not None:
            inverse = [list(channel_order).index(i) for i in range(crop_mean.shape[2])]
            crop_mean = crop_mean[:, :, inverse]
        if raw_scale is not None:
            crop_mean /= raw_scale
        self.crop_mean = crop_mean
