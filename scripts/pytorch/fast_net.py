"""The crate's ResNeXt in PyTorch, from a `ResNeXtConfig` as JSON (what `resnext.model` holds in
a weights file), for the layouts torchvision's own `resnet.py` does not cover: the whitening
stem (`"stem": "whitening"`), max-pool downsampling (`"downsample": "maxpool"`), GELU
(`"activation": "gelu"`), another BN momentum (`"bn_momentum"`) and a factor on the logits
(`"logit_scale"`). Parameter names are
torchvision's, so `load_state_dict(strict=True)` takes the crate's safetensors.

Written from the descriptions in src/resnext/config.rs (`Stem::Whitening`, `Downsample`,
`Activation`), not from the Rust code: tests/fast_model.rs checks the two agree, and
benches/time_to_accuracy.py trains this network to measure the crate's implementation against
PyTorch's on the same network and recipe.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def activation(name):
    return {"relu": F.relu, "gelu": F.gelu}[name]


class Block(nn.Module):
    """torchvision's Bottleneck with `groups`, and optionally a 2x2 max-pool after the grouped
    convolution (which then has stride 1) and on the shortcut's input."""

    def __init__(self, cin, width, groups, cout, stride, pool, bn, act):
        super().__init__()
        conv_stride = 1 if pool else stride
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=conv_stride, padding=1, groups=groups, bias=False)
        self.bn2 = bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = bn(cout)
        self.pool = stride if (pool and stride > 1) else 0
        self.act = act
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=conv_stride, bias=False), bn(cout))
        else:
            self.downsample = None

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.conv2(out)
        if self.pool:
            out = F.max_pool2d(out, self.pool)
            x = F.max_pool2d(x, self.pool)
        out = self.act(self.bn2(out))
        out = self.bn3(self.conv3(out))
        out = out + (self.downsample(x) if self.downsample is not None else x)
        return self.act(out)


class Net(nn.Module):
    """Stem, stages of `Block`s, global average pooling, linear classifier."""

    def __init__(self, cfg):
        super().__init__()
        momentum = cfg.get("bn_momentum", 0.1)
        bn = lambda c: nn.BatchNorm2d(c, eps=1e-5, momentum=momentum)  # noqa: E731
        self.act = activation(cfg.get("activation", "relu"))
        pool = cfg.get("downsample", "stride") == "maxpool"
        stem = cfg["stem"]
        c0 = cfg["stem_channels"]
        if stem == "whitening":
            self.conv1 = nn.Conv2d(3, c0, 2, padding=0, bias=True)
            self.conv1.weight.requires_grad_(False)
            self.bn1 = None
            self.stem_pool = False
        else:
            k, s = (3, 1) if stem == "cifar" else (7, 2)
            self.conv1 = nn.Conv2d(3, c0, k, stride=s, padding=k // 2, bias=False)
            self.bn1 = bn(c0)
            self.stem_pool = stem == "imagenet"
        cin = c0
        for i, (blocks, planes) in enumerate(zip(cfg["blocks"], cfg["planes"])):
            width = planes * cfg["base_width"] // 64 * cfg["cardinality"]
            cout = 4 * planes
            stride = 2 if (i > 0 or pool) else 1
            layer = []
            for j in range(blocks):
                layer.append(Block(cin if j == 0 else cout, width, cfg["cardinality"], cout,
                                   stride if j == 0 else 1, pool and j == 0, bn, self.act))
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
            cin = cout
        self.stages = len(cfg["blocks"])
        self.fc = nn.Linear(cin, cfg["num_classes"])
        self.logit_scale = cfg.get("logit_scale", 1.0)

    def forward(self, x):
        x = self.conv1(x)
        if self.bn1 is not None:
            x = self.bn1(x)
        x = self.act(x)
        if self.stem_pool:
            x = F.max_pool2d(x, 3, 2, 1)
        for i in range(self.stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1)) * self.logit_scale
