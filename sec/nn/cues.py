"""SEC localization cues held on a device as tensors: the Annotation layer's lookup in torch.

The cue pickle (`pylayers.cues`, the original format) is read once on the host and validated
image by image with pylayers' own checks; then every image's labels sit in one
(images x C) table and its cue points in one concatenated (3 x K_total) int tensor with
per-image offsets, on the device. A batch lookup gathers the rows of its images and scatters
their points into dense N x C x S x S cues without leaving the device.
"""
import numpy as np
import torch

from pylayers.cues import CUE_SIZE, NUM_CLASSES, _lookup, image_id, image_labels_and_cues
from sec.caffe.layers.data import host_values


class DeviceCues:
    """Labels and cues of every image of a cue dict, ready for batch lookups on ``device``.

    lookup(ids) -> (labels N x 1 x 1 x C float32, cues N x C x S x S float32), equal to
    `pylayers.cues.batch_labels_and_cues` for the same ids. ``ids``: a sequence of ints or a
    tensor of integer-valued floats (the ImageData layer's second top).
    """

    def __init__(self, cues, num_classes=NUM_CLASSES, cue_size=CUE_SIZE, source="<cues>", device="cpu"):
        self.num_classes, self.cue_size, self.source = int(num_classes), int(cue_size), source
        self.cues = cues
        ids = sorted({int(key[:-len("_labels")]) for key in cues
                      if str(key).endswith("_labels") and str(key)[:-len("_labels")].lstrip("-").isdigit()})
        self.row = {image: row for row, image in enumerate(ids)}
        # images pylayers refuses are kept out of the tables; looking one up raises pylayers'
        # error then, as the numpy layer does (a bad entry no batch uses stops nothing)
        self.invalid = set()
        labels = np.zeros((len(ids), self.num_classes), dtype=np.float32)
        points, counts = [], np.zeros(len(ids), dtype=np.int64)
        for row, image in enumerate(ids):
            try:
                labels[row] = image_labels_and_cues(cues, image, self.num_classes, self.cue_size, source)[0]
            except (KeyError, ValueError):
                self.invalid.add(image)
                continue
            image_points = np.asarray(_lookup(cues, f"{image}_cues", image, source), dtype=np.int64)
            points.append(image_points.reshape(3, -1))
            counts[row] = points[-1].shape[1]
        all_points = np.concatenate(points, axis=1) if points else np.zeros((3, 0), dtype=np.int64)
        self.max_points = int(counts.max()) if len(counts) else 0
        self.device = torch.device(device)
        self.labels = torch.from_numpy(labels).to(self.device)
        # one zero-width sentinel point at the end: padded gathers read it and write nothing
        self.points = torch.from_numpy(np.concatenate([all_points, np.zeros((3, 1), np.int64)], axis=1)).to(self.device)
        self.offsets = torch.from_numpy(np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(counts)
                                        else np.zeros(0, np.int64)).to(self.device)
        self.counts = torch.from_numpy(counts).to(self.device)

    def rows(self, ids):
        """Table rows of the image ids (host ints); KeyError naming the id and the file when absent.

        Ids uploaded by a data layer are read from its host copy (sec.caffe.layers.data.host_values):
        reading them back from a GPU would make the host wait for it."""
        if torch.is_tensor(ids):
            host = host_values(ids)
            values = host.reshape(-1).tolist() if host is not None else ids.detach().cpu().reshape(-1).tolist()
        else:
            values = list(ids)
        rows = []
        for value in values:
            image = image_id(value, f"image ids for {self.source}")
            if image not in self.row or image in self.invalid:
                image_labels_and_cues(self.cues, image, self.num_classes, self.cue_size, self.source)
                raise AssertionError(f"image id {image}: pylayers accepts what DeviceCues refused")
            rows.append(self.row[image])
        return torch.tensor(rows, dtype=torch.int64).to(self.device, non_blocking=True)

    def lookup(self, ids):
        rows = self.rows(ids)
        num, classes, side = rows.numel(), self.num_classes, self.cue_size
        labels = self.labels[rows].reshape(num, 1, 1, classes)
        cues = torch.zeros(num * classes * side * side + 1, dtype=torch.float32, device=self.device)
        if self.max_points:
            slot = torch.arange(self.max_points, device=self.device)
            index = self.offsets[rows][:, None] + slot[None, :]
            valid = slot[None, :] < self.counts[rows][:, None]
            index = torch.where(valid, index, torch.full_like(index, self.points.shape[1] - 1))
            cls, y, x = self.points[:, index]
            image = torch.arange(num, device=self.device)[:, None].expand_as(index)
            flat = ((image * classes + cls) * side + y) * side + x
            # padding slots write into the extra last element, which is dropped
            flat = torch.where(valid, flat, torch.full_like(flat, cues.numel() - 1))
            cues.index_fill_(0, flat.reshape(-1), 1.0)
        return labels, cues[:-1].reshape(num, classes, side, side)
