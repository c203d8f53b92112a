"""The built-in datasets (casdm.data) and their options."""

from casdm.components import Dataset, NoOptions, register

DIGITS = register(
    Dataset(
        name="digits",
        target="casdm.data:load_digits_split",
        options=NoOptions,
        evaluator="classifier",  # its 8x8 images are far from ImageNet's
        summary="scikit-learn's 8x8 handwritten digits, embedded (1,437 train / 360 test)",
    )
)
CIFAR10 = register(
    Dataset(
        name="cifar10",
        target="casdm.data:load_cifar10",
        options=NoOptions,
        summary="CIFAR-10 32x32 RGB, downloaded into data.data_dir (50,000 / 10,000)",
    )
)
FOLDER = register(
    Dataset(
        name="folder",
        target="casdm.data:load_folder",
        options=NoOptions,
        takes_path=True,
        summary="folder:PATH, every image under PATH, centre-cropped; 90/10 split",
    )
)
NPZ = register(
    Dataset(
        name="npz",
        target="casdm.data:load_npz",
        options=NoOptions,
        takes_path=True,
        summary="npz:PATH, an ADM-style .npz (arr_0, NHWC uint8); 90/10 split",
    )
)
