"""Score formulas on feature arrays: Fréchet distance (FID, sFID), IS, KID, precision, recall."""

import numpy as np
import torch

from bench.errors import BenchError

PR_NEIGHBOURS = 3  # k of the k-NN manifold (Kynkaanniemi et al. 2019; ADM's evaluator)
KID_SEED = 0  # clean-fid draws KID's subsets from numpy's global RNG; seeded for repeatability


IMAGINARY_TOLERANCE = 1e-3  # clean-fid's: a larger imaginary part of the root is an error


def psd_sqrt(sigma: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """[D, D] float64 symmetric square root R of a covariance (R R = sigma), by eigh.

    Eigenvalues below 0 (rounding, in a singular covariance) are taken as 0.
    """
    s = torch.as_tensor(sigma, dtype=torch.float64, device=device)
    values, vectors = torch.linalg.eigh((s + s.T) / 2)
    return ((vectors * values.clamp_min(0).sqrt()) @ vectors.T).cpu().numpy()


class TraceSqrt:
    """Tr (S1 S2)^1/2 for any S1 against one fixed covariance S2, given R = S2^1/2.

    S1 S2 = S1 R R has the eigenvalues of the symmetric R S1 R, so the trace of its principal
    square root is the sum of the square roots of eigvalsh(R S1 R): one symmetric
    eigendecomposition in float64 instead of a general matrix square root (scipy's sqrtm).
    A clearly negative eigenvalue (S1 not positive semi-definite) would make the root complex;
    it raises ValueError when its square root exceeds clean-fid's tolerance for the imaginary
    part (1e-3), as clean-fid does; rounding-level negatives (singular covariances) count as 0.
    """

    def __init__(self, root2: np.ndarray, device: torch.device | str = "cpu"):
        self.root = torch.as_tensor(root2, dtype=torch.float64, device=device)

    def __call__(self, sigma1: torch.Tensor) -> float:
        sigma1 = torch.as_tensor(sigma1, dtype=torch.float64, device=self.root.device)
        inner = self.root @ sigma1 @ self.root
        eigenvalues = torch.linalg.eigvalsh((inner + inner.T) / 2)
        imaginary = eigenvalues.clamp_max(0).neg().sqrt().max().item()
        if imaginary > IMAGINARY_TOLERANCE:
            raise ValueError(f"imaginary component {imaginary:.3g}")
        return float(eigenvalues.clamp_min(0).sqrt().sum())


def frechet_from_trace(
    mu1: torch.Tensor,
    sigma1: torch.Tensor,
    mu2: torch.Tensor,
    sigma2: torch.Tensor,
    trace: TraceSqrt,
) -> float:
    """||mu1 - mu2||^2 + Tr S1 + Tr S2 - 2 Tr (S1 S2)^1/2 in float64, the trace from `trace`."""
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace()) - 2 * trace(sigma1)


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    what: str,
    *,
    root2: np.ndarray | None = None,
    device: torch.device | str = "cpu",
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) (Heusel et al. 2017).

    The value of clean-fid's `frechet_distance` (to about 1e-7 relative on 2048-d Inception
    covariances), with its trace term from `TraceSqrt`: `root2` = psd_sqrt(sigma2), computed
    once per reference and cached with it (computed here when not given). clean-fid takes the
    real part of scipy's sqrtm and, when that is not finite, offsets both covariances by
    1e-6 I; the eigendecomposition needs neither: with a singular S1 or S2 the zero eigenvalues
    of R S1 R come out at rounding level (~1e-16), each adding at most its square root.
    A root with an imaginary part above 1e-3 (a covariance that is not positive
    semi-definite) is a BenchError, as clean-fid raises on it.
    """
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise BenchError(
            f"{what}: the statistics differ in dimension ({mu1.shape[0]} vs {mu2.shape[0]}); "
            "the reference statistics were computed with another feature network"
        )
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise BenchError(f"{what}: the feature statistics hold NaN or infinite values")
    if root2 is None:
        root2 = psd_sqrt(sigma2, device)
    trace = TraceSqrt(root2, device)
    t1, s1, t2, s2 = (
        torch.as_tensor(a, dtype=torch.float64, device=device) for a in (mu1, sigma1, mu2, sigma2)
    )
    try:
        return frechet_from_trace(t1, s1, t2, s2, trace)
    except ValueError as err:
        raise BenchError(
            f"{what}: the matrix square root of the covariance product has a large imaginary "
            f"part ({err}). The covariances are too singular for a trustworthy value: use "
            f"more images (at least the feature dimension, {mu1.shape[0]}, is advisable)"
        ) from None


ADM_IS_CHUNK = 5000  # guided-diffusion's evaluator: compute_inception_score(split_size=5000)
TORCH_FIDELITY_IS_SEED = 2020  # torch-fidelity's default rng_seed for samples_shuffle
IS_PROTOCOLS = ("adm", "torch-fidelity")


def inception_score(
    logits: np.ndarray, protocol: str = "adm", splits: int = 10
) -> tuple[float, float]:
    """IS = exp(E_x KL(p(y|x) || p(y))) per part, mean and std over the parts (Salimans et al.
    2016), p(y) each part's mean prediction, in float64.

    protocol "adm" (guided-diffusion's evaluator): consecutive, unshuffled chunks of 5,000
    samples, the last one shorter when N is not a multiple (at N = 50,000 this is 10 splits;
    below 5,000 a single chunk, std 0). ADM prints the mean only; the std is over the chunks.
    Samples stored sorted by class would score too low (guided-diffusion issue #165).
    protocol "torch-fidelity" (its defaults): the samples shuffled with a RandomState(2020)
    permutation, then `splits` parts [i N / splits, (i + 1) N / splits).
    """
    if protocol not in IS_PROTOCOLS:
        raise BenchError(
            f"unknown Inception Score protocol {protocol!r}; valid: {', '.join(IS_PROTOCOLS)}"
        )
    n = len(logits)
    if protocol == "torch-fidelity" and n < splits:
        raise BenchError(
            f"the Inception Score splits the images into {splits} parts, but there are only {n} "
            f"images; score at least {splits} images or lower eval.is_splits"
        )
    if n == 0:
        raise BenchError("the Inception Score needs at least one image, got 0")
    log_p = torch.from_numpy(np.asarray(logits, dtype=np.float64)).log_softmax(1)  # [N, K]
    if protocol == "adm":
        parts = log_p.split(ADM_IS_CHUNK)
    else:
        order = np.random.RandomState(TORCH_FIDELITY_IS_SEED).permutation(n)
        log_p = log_p[torch.from_numpy(order)]
        parts = [log_p[i * n // splits : (i + 1) * n // splits] for i in range(splits)]
    scores = []
    for part in parts:
        log_py = part.exp().mean(0).log()  # [K]: log of the part's marginal p(y)
        kl = (part.exp() * (part - log_py)).sum(1).mean()
        scores.append(kl.exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def inception_score_protocol(protocol: str, splits: int = 10) -> str:
    """How `inception_score` splits the samples, as printed next to the score."""
    if protocol == "adm":
        return f"ADM evaluator: consecutive chunks of {ADM_IS_CHUNK:,} samples"
    return (
        f"torch-fidelity: {splits} splits of the shuffled samples (seed {TORCH_FIDELITY_IS_SEED})"
    )


PRECISION_RECALL_PROTOCOL = (
    f"k = {PR_NEIGHBOURS} nearest neighbours, distances in float32 (as torch-fidelity; "
    "ADM's evaluator uses float16 where finite)"
)


def kernel_inception_distance(features1: np.ndarray, features2: np.ndarray) -> float:
    """KID (Binkowski et al. 2018): clean-fid's unbiased cubic-kernel MMD^2 over 100 subsets.

    Features go in as they are (float32, as clean-fid passes them): evaluators keep them O(1),
    so the kernel (x.y / D + 1)^3 and its sums stay well within float32 precision.
    """
    for feats in (features1, features2):
        if len(feats) < 2:
            raise BenchError(f"KID needs at least 2 images per set, got {len(feats)}")
    from cleanfid.fid import kernel_distance  # imports torchvision: seconds, so only when used

    state = np.random.get_state()
    np.random.seed(KID_SEED)
    try:
        return float(kernel_distance(features1, features2))
    finally:
        np.random.set_state(state)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[A, B] squared Euclidean distances, clamped at 0 (ADM's DistanceBlock)."""
    sq = a @ b.T  # the one [A, B] block allocated; the rest is in place
    return sq.mul_(-2).add_((a * a).sum(1, keepdim=True)).add_((b * b).sum(1)).clamp_min_(0)


def _rows(n_rows: int, n_cols: int) -> int:
    """Rows per block so one [rows, n_cols] float32 distance block stays under 64 MiB."""
    return max(1, min(n_rows, (1 << 24) // max(n_cols, 1)))


def manifold_radii(features: torch.Tensor, k: int = PR_NEIGHBOURS) -> torch.Tensor:
    """[N] squared distance of each point to its k-th nearest other point of the set."""
    n = len(features)
    if n <= k:
        raise BenchError(
            f"precision/recall need more than k = {k} images per set (each point's radius is "
            f"the distance to its k-th nearest neighbour), got {n}"
        )
    step = _rows(n, n)
    # The point itself is at distance 0 (rank 1), so the k-th neighbour is rank k + 1, as ADM.
    return torch.cat(
        [
            _squared_distances(features[i : i + step], features).kthvalue(k + 1, dim=1).values
            for i in range(0, n, step)
        ]
    )


def _inside(points: torch.Tensor, manifold: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """[P] bool: whether each point lies within the radius of some point of the manifold."""
    step = _rows(len(points), len(manifold))
    return torch.cat(
        [
            (_squared_distances(points[i : i + step], manifold) <= radii).any(1)
            for i in range(0, len(points), step)
        ]
    )


def precision_recall(
    reference: np.ndarray,
    samples: np.ndarray,
    device: torch.device | str = "cpu",
    reference_radii: np.ndarray | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, k = 3), as ADM's evaluator.

    Precision: the fraction of samples inside the reference manifold (the union of balls
    reaching each reference point's 3rd nearest neighbour); recall: the reverse.
    `reference_radii` (manifold_radii of `reference`) saves recomputing them.
    """
    ref = torch.as_tensor(reference, dtype=torch.float32, device=device)
    gen = torch.as_tensor(samples, dtype=torch.float32, device=device)
    if reference_radii is None:
        radii = manifold_radii(ref)
    else:
        radii = torch.as_tensor(reference_radii, dtype=torch.float32, device=device)
    precision = _inside(gen, ref, radii).double().mean().item()
    recall = _inside(ref, gen, manifold_radii(gen)).double().mean().item()
    return precision, recall
