"""Feature cache for frozen backbones.

Feature maps are computed once per (images, backbone, weights, transform) and stored in fp16 under
a content hash: ``<cache_dir>/<hash>/features.npy`` (memory-mapped when read) and ``meta.json``.
The hash covers the image files (path, size, modification time), the version of the image loader
(``IMAGE_LOADER_VERSION``: how a file becomes pixels, EXIF orientation included), the backbone's
name, the exact weights (a digest of every tensor) and the transform, so a stale entry is never
reused. An entry
is written in a temporary folder and renamed into place, so a killed run leaves no half entry.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from mlrpl.data.dataset import IMAGE_LOADER_VERSION, load_image
from mlrpl.errors import DataError
from mlrpl.utils.files import rename_into_place
from mlrpl.utils.progress import progress


def state_digest(module: torch.nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, shapes, values), or over the
    tensors its ``cache_state()`` names when it has one."""
    state = module.cache_state() if hasattr(module, "cache_state") else module.state_dict()
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        h.update(name.encode())
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def cache_key(paths: list[str], backbone_name: str, weights_digest: str, transform) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"backbone": backbone_name, "weights": weights_digest,
                         "transform": repr(transform), "n": len(paths),
                         "image_loader": IMAGE_LOADER_VERSION}).encode())
    for p in paths:
        try:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{int(st.st_mtime)}\n".encode())
        except OSError:
            h.update(f"{os.path.abspath(p)}|missing\n".encode())
    return h.hexdigest()[:24]


class _CacheImages(Dataset):
    def __init__(self, paths, transform, skip_bad):
        self.paths, self.transform, self.skip_bad = paths, transform, skip_bad

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            img = self.transform(load_image(self.paths[i]))
            return img, True, i
        except DataError:
            if not self.skip_bad:
                raise
            return None, False, i


def _collate(batch):
    ok = [b for b in batch if b[1]]
    imgs = torch.stack([b[0] for b in ok]) if ok else None
    return imgs, torch.tensor([b[1] for b in batch]), torch.tensor([b[2] for b in batch])


def _open_entry(path: Path, shape: tuple) -> np.memmap:
    """The fp16 feature file, its whole size reserved on disk first.

    Writing into a sparse memory map on a full disk kills the process with SIGBUS and prints
    nothing; reserving the blocks up front turns a full disk into one clear error, before the
    long computation."""
    from mlrpl.utils.files import DiskError, os_error_message
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        del out
        raise DiskError(os_error_message(e, path.parent.parent) + " (feature cache of "
                        f"{np.prod(shape) * 2 / 2**20:.0f} MiB; set model.cache_dir to another "
                        f"disk)") from None
    except AttributeError:  # no posix_fallocate on this platform
        pass
    return out


def cached_features(paths: list[str], backbone, transform, cache_dir, backbone_name: str,
                    batch_size: int = 32, device="cpu", num_workers: int = 0,
                    on_bad_image: str = "error", amp_dtype=None, show_progress=None):
    """Return (features memmap (N, C_f, H, W) fp16, valid bool (N,), entry directory).

    Items whose image is unreadable are an error, or with ``on_bad_image="skip"`` are left as
    zeros and marked invalid in ``valid`` (the caller drops them and counts them).
    """
    backbone.eval()
    digest = state_digest(backbone)
    key = cache_key(paths, backbone_name, digest, transform)
    entry = Path(cache_dir) / key
    feats_file, meta_file = entry / "features.npy", entry / "meta.json"
    if feats_file.is_file() and meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        return (np.load(feats_file, mmap_mode="r"), np.array(meta["valid"], dtype=bool), entry)

    from mlrpl.utils import faults
    from mlrpl.utils.files import check_writable_dir, disk_errors, remove_stale_temps
    check_writable_dir(cache_dir, "feature-cache folder (model.cache_dir)", create=True)
    remove_stale_temps(cache_dir)  # entries half-written by killed runs
    tmp = Path(cache_dir) / f".{key}.{os.getpid()}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        loader = DataLoader(_CacheImages(paths, transform, on_bad_image == "skip"),
                            batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
        out = None
        valid = np.zeros(len(paths), dtype=bool)
        with torch.inference_mode():
            for imgs, ok, idx in progress(loader, desc="caching features", enable=show_progress):
                valid[idx.numpy()] = ok.numpy()
                if imgs is None:
                    continue
                with torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype,
                                    enabled=amp_dtype is not None):
                    f = backbone(imgs.to(device)).float()
                if out is None:
                    out = _open_entry(tmp / "features.npy", (len(paths),) + tuple(f.shape[1:]))
                out[idx[ok].numpy()] = f.cpu().numpy().astype(np.float16)
                faults.point("cache.batch")
        if out is None:
            raise DataError("no readable image to cache", path=paths[0] if paths else None)
        out.flush()
        del out
        with disk_errors(tmp / "meta.json"):
            (tmp / "meta.json").write_text(json.dumps({
                "backbone": backbone_name, "weights_digest": digest,
                "transform": repr(transform), "image_loader": IMAGE_LOADER_VERSION,
                "num_items": len(paths), "valid": valid.tolist(),
                "bad_images": [p for p, v in zip(paths, valid) if not v]}, indent=1))
        try:
            rename_into_place(tmp, entry, raw_errors=True)
        except OSError:  # another process finished the same entry first
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    meta = json.loads(meta_file.read_text())
    return np.load(feats_file, mmap_mode="r"), np.array(meta["valid"], dtype=bool), entry
