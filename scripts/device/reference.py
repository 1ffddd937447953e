"""PyTorch references for scripts/device-check.sh: training images/s of ResNeXt-50 32x4d (CIFAR
stem) in PyTorch's Python on the same machine, two ways:

* tutorial: the popular tutorial's pipeline: a Dataset producing one augmented image at a time
  (PIL + torchvision transforms when installed, else the same per-image work in torch), a
  DataLoader with 2 worker processes, fp32, NCHW, host-to-device copy of every batch;
* eager-gpu: the dataset resident on the device as uint8, augmented there in batched ops,
  bf16 autocast (on CUDA) and channels-last: a good eager PyTorch pipeline.

Prints one `RESULT {json}` line per measurement. Runs on CUDA or (slowly, for a smoke test) CPU.
"""
import argparse, json, time

import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck with groups / width_per_group."""

    def __init__(self, cin, planes, stride, groups=32, base_width=4):
        super().__init__()
        width = int(planes * base_width / 64) * groups
        out = planes * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        o = F.relu(self.bn1(self.conv1(x)))
        o = F.relu(self.bn2(self.conv2(o)))
        o = self.bn3(self.conv3(o))
        return F.relu(o + (x if self.downsample is None else self.downsample(x)))


def resnext50_cifar(num_classes=10):
    """torchvision.models.resnext50_32x4d with the CIFAR stem (3x3 conv, stride 1, no max-pool)."""
    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True)]
    cin = 64
    for i, (n, planes) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        for j in range(n):
            layers.append(Bottleneck(cin, planes, 2 if i > 0 and j == 0 else 1))
            cin = planes * 4
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, num_classes)]
    return nn.Sequential(*layers)


def read_records(path, limit=None):
    data = open(path, "rb").read()
    n = len(data) // 3073
    if limit:
        n = min(n, limit)
    t = torch.frombuffer(bytearray(data[: n * 3073]), dtype=torch.uint8).view(n, 3073)
    return t[:, 1:].reshape(n, 3, 32, 32).clone(), t[:, 0].long().clone()


class TutorialDataset(torch.utils.data.Dataset):
    """One image at a time, as torchvision.datasets.CIFAR10 with the tutorial's transforms."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels
        try:
            import torchvision.transforms as T
            from PIL import Image

            self.to_pil = lambda x: Image.fromarray(x.permute(1, 2, 0).numpy())
            self.transform = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
            self.kind = "PIL + torchvision transforms"
        except Exception:  # no torchvision / PIL / numpy: the same per-image work in torch
            self.to_pil = lambda x: x
            self.transform = self.torch_transform
            self.kind = "per-image torch transforms (torchvision not installed)"

    @staticmethod
    def torch_transform(x):
        x = F.pad(x.float() / 255.0, (4, 4, 4, 4))
        i, j = torch.randint(0, 9, (2,)).tolist()
        x = x[:, i : i + 32, j : j + 32]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.to_pil(self.images[i])), self.labels[i]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step_fn(model, opt, device, autocast):
    def step(x, y):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    return step


def tutorial(images, labels, batch, steps, device):
    model = resnext50_cifar().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    ds = TutorialDataset(images, labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    step = step_fn(model, opt, device, False)
    done, t0 = 0, None
    while done < steps + 3:
        for x, y in loader:
            step(x.to(device), y.to(device))
            done += 1
            if done == 3:  # warm-up: workers started, cuDNN chose its kernels
                sync(device)
                t0 = time.perf_counter()
            if done == steps + 3:
                break
    sync(device)
    return steps * batch / (time.perf_counter() - t0), ds.kind


def eager_gpu(images, labels, batch, steps, device):
    model = resnext50_cifar().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    step = step_fn(model, opt, device, device.type == "cuda")
    x_all, y_all = images.to(device), labels.to(device)
    mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255
    base = torch.arange(32, device=device)
    n = len(y_all)

    def batch_at(idx):
        x = F.pad(x_all[idx], (4, 4, 4, 4))
        b = len(idx)
        oy, ox = torch.randint(0, 9, (2, b), device=device)
        rows = (oy[:, None] + base)[:, None, :, None].expand(b, 3, 32, 32)
        cols = (ox[:, None] + base)[:, None, None, :].expand(b, 3, 32, 32)
        x = x[torch.arange(b, device=device)[:, None, None, None], torch.arange(3, device=device)[None, :, None, None], rows, cols]
        flip = torch.rand(b, device=device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        return x, y_all[idx]

    perm = torch.randperm(n, device=device)
    for i in range(steps + 3):
        if i == 3:
            sync(device)
            t0 = time.perf_counter()
        j = (i * batch) % (n - batch + 1)
        step(*batch_at(perm[j : j + batch]))
    sync(device)
    how = "device-resident uint8, batched augmentation, channels-last"
    return steps * batch / (time.perf_counter() - t0), how + (", bf16 autocast" if device.type == "cuda" else ", fp32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="CIFAR-format record file (train.bin)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", default="128,256,512")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--mode", default="tutorial,eager-gpu")
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    images, labels = read_records(args.data, args.limit)
    for mode in args.mode.split(","):
        for batch in [int(b) for b in args.batch.split(",")]:
            fn = {"tutorial": tutorial, "eager-gpu": eager_gpu}[mode]
            rate, how = fn(images, labels, batch, args.steps, device)
            print(f"pytorch {mode:<9} batch {batch:>4}: {rate:8.0f} images/s  ({how})", flush=True)
            print("RESULT " + json.dumps({"impl": "pytorch-" + mode, "batch": batch, "images_per_sec": rate, "how": how}), flush=True)


if __name__ == "__main__":
    main()
