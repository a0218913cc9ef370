"""The data: where it comes from and what it looks like, backend-neutral (no framework).

- `images`: decoding to RGB (PIL), the chapter's normalisation and test resize;
- `folders`: image folders (`<split>/<class>/*.jpg`), their checks and listing;
- `hub`: the cache folder, checked downloads, safe extraction, the hotdog data,
  and `resolve_data_dir` (a folder or a .zip with train/ and test/);
- `split`: one folder of class subfolders split into train/ and test/;
- `decode_cache`, `crops`: the fast pipeline's decoded images and crop sampler;
- `fixed`: deterministic batches that both backends see identically.

The names most code needs are re-exported here (``from d2lft.data import fetch``).
"""

from .folders import (
    EXPECTED_LAYOUT,
    DataLayoutError,
    check_image_folder,
    check_splits,
    find_split_root,
    list_images,
)
from .hub import (
    DATA_HUB,
    HOTDOG_SHA1,
    HOTDOG_URL,
    DownloadError,
    cache_dir,
    download_hotdog,
    extract_zip,
    fetch,
    file_sha1,
    resolve_data_dir,
)
from .images import (
    IMAGE_SUFFIXES,
    MEAN,
    STD,
    BadImageError,
    array_to_pil,
    check_image_file,
    load_rgb,
    test_resize,
    to_rgb,
)

__all__ = [
    "DATA_HUB",
    "EXPECTED_LAYOUT",
    "HOTDOG_SHA1",
    "HOTDOG_URL",
    "IMAGE_SUFFIXES",
    "MEAN",
    "STD",
    "BadImageError",
    "DataLayoutError",
    "DownloadError",
    "array_to_pil",
    "cache_dir",
    "check_image_file",
    "check_image_folder",
    "check_splits",
    "download_hotdog",
    "extract_zip",
    "fetch",
    "file_sha1",
    "find_split_root",
    "list_images",
    "load_rgb",
    "resolve_data_dir",
    "test_resize",
    "to_rgb",
]
