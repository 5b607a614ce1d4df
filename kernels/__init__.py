"""Pre- and post-processing kernels: CuPy on the GPU, NumPy on the host, one API.

Each function takes a NumPy or a CuPy array and runs where the array lives: NumPy's version is
the reference the CuPy kernels are tested against (tests/gpu). CuPy is imported only when a
device array arrives, so this package imports, and its NumPy paths run, without a GPU.
"""

from kernels.classify import softmax_topk
from kernels.image import ImageSteps, preprocess_images

__all__ = ["ImageSteps", "preprocess_images", "softmax_topk"]
