"""Frozen copy of the networks as they were built before the factor levels (issue 14),
kept only to prove that the default levels still build them bit for bit: the same
modules, parameter names, initialization order (so the same weights for a seed)
and outputs. Do not change it to follow the models."""
import torch.nn as nn
import torch.nn.functional as F


class LegacyDenseBlock(nn.Linear):
    def __init__(self, in_features, out_features, *, bias, shortcut):
        super().__init__(in_features, out_features, bias=bias)
        self.shortcut = shortcut

    def forward(self, x):
        h = F.relu(super().forward(x))
        return h + x if self.shortcut else h


class LegacyMLP(nn.Module):
    def __init__(self, *, depth, width, in_features, num_classes, bias, residual):
        super().__init__()
        dims = [in_features] + [width] * (depth - 1)
        blocks = [LegacyDenseBlock(dims[i], dims[i + 1], bias=bias,
                                   shortcut=residual and dims[i] == dims[i + 1])
                  for i in range(depth - 1)]
        blocks.append(nn.Linear(width, num_classes, bias=bias))
        self.layers = nn.ModuleList(blocks)

    def forward(self, x):
        x = x.flatten(1)
        for layer in self.layers:
            x = layer(x)
        return x


class LegacyBasicBlock(nn.Module):
    def __init__(self, in_ch, out_ch, stride, *, residual):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = None
        if residual:
            self.shortcut = nn.Identity()
            if stride != 1 or in_ch != out_ch:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False),
                                              nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return F.relu(out)


class LegacyResNet(nn.Module):
    def __init__(self, *, layout, base_width, num_classes, in_channels, residual):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, base_width, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(base_width), nn.ReLU(inplace=True))
        self.stage_names = []
        ch = base_width
        for i, n in enumerate(layout):
            out_ch = base_width * 2 ** i
            stride = 1 if i == 0 else 2
            blocks = [LegacyBasicBlock(ch if j == 0 else out_ch, out_ch, stride if j == 0 else 1,
                                       residual=residual) for j in range(n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.stage_names.append(f"layer{i + 1}")
            ch = out_ch
        self.fc = nn.Linear(ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = self.stem(x)
        for n in self.stage_names:
            x = getattr(self, n)(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def legacy_build(cfg) -> nn.Module:
    """Today's network for a config at its default levels."""
    if cfg.family == "mlp":
        return LegacyMLP(depth=cfg.depth, width=cfg.width, in_features=cfg.in_features,
                         num_classes=cfg.num_classes, bias=cfg.bias, residual=cfg.residual)
    return LegacyResNet(layout=cfg.layout_blocks(), base_width=cfg.base_width,
                        num_classes=cfg.num_classes, in_channels=cfg.in_channels,
                        residual=cfg.residual)
