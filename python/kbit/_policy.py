"""Which CUDA variant serves CUDA tensors: a pure function of the facts, the bundled variants and the override.

This module owns the selection rules and the BNB_CUDA_VERSION syntax; it does no I/O (facts come in as
kbit._facts dataclasses) and loads nothing. CPU tensors are always served by the CPU library, whatever is
decided here. The rules (tests/runtime/test_policy.py holds one table of cases for them):

- BNB_CUDA_VERSION, when set, must be `124` / `1210` (major then minor), `12.4`, or `cpu`; anything else
  (letters, paths, empty, whitespace, long strings) raises BadOverrideError listing the bundled variants,
  and a well-formed value naming a variant that is not bundled raises VariantNotBundledError. A valid
  override is honoured even when torch has no CUDA, with a warning for every fact it contradicts (another
  CUDA major than torch's, a GPU its archs do not cover, a driver older than its toolkit, no driver).
- Without an override and with a CPU-only torch: no CUDA variant (and the driver is not even asked).
- Otherwise the candidates are the bundled variants of torch's CUDA major, newest toolkit first. A candidate
  is rejected when the driver's CUDA version (cuDriverGetVersion) is older than its toolkit (checked
  strictly: CUDA's minor-version compatibility is explained in messages, never relied upon), or when some
  visible GPU is covered neither by its SASS (same major, minor at least the SASS arch's: NVIDIA's binary
  compatibility rule) nor by its PTX (PTX arch at most the GPU's; the driver JIT-compiles it, which the
  driver check above makes possible). The first candidate that passes is chosen; when none does, CUDA
  tensors get no variant and the decision carries one warning that says why and what to install.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from kbit import _errors
from kbit._facts import Facts, Gpu, Variant, cuda_version_text

OVERRIDE_VARIABLE = "BNB_CUDA_VERSION"
# CUDA major 10..99 and minor 0..99, without leading zeros ("0124" is not 12.4, nor is "12.04")
_DIGITS = re.compile(r"([1-9][0-9])([0-9]|[1-9][0-9])")
_DOTTED = re.compile(r"([1-9][0-9])\.([0-9]|[1-9][0-9])")



class Problem(str, enum.Enum):
    """Why a decision (or a rejected candidate) has no variant: its failure class. The values are stable names
    (they appear in `python -m kbit --json`)."""

    NO_VARIANT_FOR_MAJOR = "no_variant_for_major"
    DRIVER_TOO_OLD = "driver_too_old"
    ARCH_NOT_COVERED = "arch_not_covered"
    NO_DRIVER = "no_driver"
    TORCH_CPU_ONLY = "torch_cpu_only"
    TORCH_ROCM = "torch_rocm"
    TORCH_CUDA_UNREADABLE = "torch_cuda_unreadable"
    OVERRIDE_CPU = "override_cpu"


# failure classes of a decision without a variant (the typed error kbit raises for a CUDA tensor)
PROBLEM_ERRORS = {
    Problem.NO_VARIANT_FOR_MAJOR: _errors.CudaVersionMismatchError,
    Problem.DRIVER_TOO_OLD: _errors.DriverTooOldError,
    Problem.ARCH_NOT_COVERED: _errors.ArchNotCoveredError,
    Problem.NO_DRIVER: _errors.DriverNotFoundError,
    Problem.TORCH_CPU_ONLY: _errors.BackendUnavailableError,
    Problem.TORCH_ROCM: _errors.BackendUnavailableError,
    Problem.TORCH_CUDA_UNREADABLE: _errors.BackendUnavailableError,
    Problem.OVERRIDE_CPU: _errors.BackendUnavailableError,
}


class Route(str, enum.Enum):
    """How a variant's code reaches a GPU."""

    SASS = "sass"                        # SASS built for exactly this arch
    SASS_COMPATIBLE = "sass_compatible"  # SASS of an older minor of the same major (binary compatible)
    PTX = "ptx"                          # PTX the driver JIT-compiles
    NONE = "none"                        # not covered


@dataclass(frozen=True)
class Coverage:
    """How the chosen variant runs on one visible GPU: the route and the arch it goes through (None: not
    covered). str() is the text the reasons show ("SASS sm_89", "PTX compute_90 (JIT-compiled ...)")."""

    gpu: int
    sm: int
    route: Route
    arch: int | None = None

    @property
    def covered(self) -> bool:
        return self.route is not Route.NONE

    def __str__(self) -> str:
        if self.route is Route.SASS:
            return f"SASS sm_{self.arch}"
        if self.route is Route.SASS_COMPATIBLE:
            return f"SASS sm_{self.arch} (binary compatible with sm_{self.sm})"
        if self.route is Route.PTX:
            return f"PTX compute_{self.arch} (JIT-compiled by the driver for sm_{self.sm} at first use)"
        return "not covered"


def _explained(evidence: str, fix: str) -> str:
    """The one text of a finding that has a fix (warnings and reasons show it whole)."""
    return f"{evidence} fix: {fix}"


@dataclass(frozen=True)
class Rejection:
    """A candidate variant that was not chosen, the failure class and why."""

    variant: str
    problem: Problem
    why: str


@dataclass(frozen=True)
class Decision:
    """The CUDA variant that serves CUDA tensors (None: none does), with every reason and warning.

    source: default | override; problem: the failure class when no variant was chosen (PROBLEM_ERRORS);
    coverage: for each visible GPU, how the chosen variant runs on it; evidence and fix: the failure's two
    halves, when it has a fix (its text, evidence + " fix: " + fix, is the warning or the reason shown)."""

    variant: str | None
    source: str
    reasons: tuple[str, ...]
    warnings: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    problem: Problem | None = None
    coverage: tuple[Coverage, ...] = ()
    evidence: str = ""
    fix: str = ""

    def error(self) -> _errors.KbitError:
        """The typed error a CUDA tensor gets when no variant was chosen."""
        cls = PROBLEM_ERRORS.get(Problem(self.problem), _errors.BackendUnavailableError) if self.problem else \
            _errors.BackendUnavailableError
        if self.evidence:
            return cls(self.evidence, fix=self.fix)
        return cls(" ".join(self.warnings or self.reasons))


# ------------------------------------------------------------------------------------------ override

def parse_override(value: str | None, bundled: tuple[str, ...]) -> str | None:
    """BNB_CUDA_VERSION -> a variant name ("cpu", "cuda124") or None when unset; BadOverrideError otherwise."""
    if value is None:
        return None
    if value.lower() == "cpu":
        return "cpu"
    match = _DIGITS.fullmatch(value) or _DOTTED.fullmatch(value)
    if not match:
        shown = value if len(value) <= 40 else value[:40] + f"... ({len(value)} characters)"
        raise _errors.BadOverrideError(
            f"{OVERRIDE_VARIABLE}={shown!r} is not a CUDA version kbit understands. It accepts the CUDA version of "
            f"a bundled variant as 124 or 12.4, or cpu. This installation bundles: {_bundled_text(bundled)}.", fix=f""
            f"set it to one of those (e.g. {OVERRIDE_VARIABLE}={_example(bundled)}) or unset it to let kbit choose")
    return f"cuda{int(match.group(1))}{int(match.group(2))}"


def _bundled_text(bundled: tuple[str, ...]) -> str:
    return ", ".join(bundled) or "no variants at all"


def _example(bundled: tuple[str, ...]) -> str:
    cuda = [b for b in bundled if b.startswith("cuda")]
    return cuda[-1][4:] if cuda else "cpu"


# ------------------------------------------------------------------------------------------ coverage

def coverage(variant: Variant, gpu: Gpu) -> Coverage:
    """How `variant` runs on `gpu`: its own SASS, binary-compatible SASS, PTX, or not at all (Route.NONE)."""
    if gpu.sm in variant.sass:
        return Coverage(gpu.index, gpu.sm, Route.SASS, gpu.sm)
    compatible = [a for a in variant.sass if a // 10 == gpu.cc[0] and a % 10 <= gpu.cc[1]]
    if compatible:
        return Coverage(gpu.index, gpu.sm, Route.SASS_COMPATIBLE, max(compatible))
    if variant.ptx is not None and (variant.ptx // 10, variant.ptx % 10) <= gpu.cc:
        return Coverage(gpu.index, gpu.sm, Route.PTX, variant.ptx)
    return Coverage(gpu.index, gpu.sm, Route.NONE)


def archs_text(v: Variant) -> str:
    ptx = f", PTX compute_{v.ptx}" if v.ptx is not None else ""
    return f"SASS {' '.join(f'sm_{a}' for a in v.sass) or 'none'}{ptx}"


def _driver_problem(facts: Facts, v: Variant) -> str | None:
    have = facts.driver.cuda_version
    if facts.driver.status == "not_probed" or v.toolkit is None or have is None or have >= v.toolkit:
        return None
    floor = f" (Linux driver >= {v.min_driver})" if v.min_driver else ""
    return (f"{v.name} is built with CUDA {cuda_version_text(v.toolkit)}, but the driver supports CUDA "
            f"{cuda_version_text(have)} (cuDriverGetVersion); kbit requires driver CUDA >= toolkit{floor}. CUDA's "
            f"minor-version compatibility may run some {v.toolkit[0]}.x code on older {v.toolkit[0]}.x drivers, but "
            f"not PTX JIT, so kbit does not rely on it")


def _arch_problem(facts: Facts, v: Variant) -> str | None:
    missing = [g for g in facts.driver.gpus if not coverage(v, g).covered]
    if not missing:
        return None
    gpus = ", ".join(f"GPU {g.index} {g.name} (sm_{g.sm})" for g in missing)
    return f"{v.name} has {archs_text(v)}, which covers neither by SASS nor by PTX: {gpus}"


def _coverage_of(facts: Facts, v: Variant) -> tuple[Coverage, ...]:
    return tuple(coverage(v, g) for g in facts.driver.gpus)


# ------------------------------------------------------------------------------------------ decision

def decide(facts: Facts, override: str | None = None) -> Decision:
    """The decision for these facts and this BNB_CUDA_VERSION value (None: unset). Raises BadOverrideError or
    VariantNotBundledError for an override that cannot be honoured."""
    bundled = tuple(v.name for v in facts.variants)
    wanted = parse_override(override, bundled)
    if wanted is not None:
        return _decide_override(facts, override, wanted, bundled)
    if facts.torch.hip:
        return _failed(Problem.TORCH_ROCM, (
            f"torch {facts.torch.version} is a ROCm build (HIP {facts.torch.hip}): its cuda tensors live on AMD GPUs, "
            f"and kbit ships NVIDIA CUDA variants only; the CPU library serves CPU tensors."),
            "on an NVIDIA machine install a CUDA build of torch; with ROCm keep kbit's tensors on the CPU",
            as_warning=False)
    if facts.torch.cuda and facts.torch.cuda_version is None:
        return _failed(Problem.TORCH_CUDA_UNREADABLE, (
            f"torch {facts.torch.version} reports CUDA {facts.torch.cuda!r}, which is not a CUDA version kbit can read, "
            f"so no CUDA variant can be matched to it."),
            "reinstall torch from pytorch.org (a build whose torch.version.cuda reads like 12.4)", as_warning=False)
    if facts.torch.cuda_version is None:
        return Decision(None, "default", (f"torch {facts.torch.version} is a CPU-only build (torch.version.cuda is "
                                          f"None), so there are no CUDA tensors to serve; the CPU library serves "
                                          f"CPU tensors",), problem=Problem.TORCH_CPU_ONLY)
    return _decide_default(facts)


def _decide_override(facts: Facts, raw: str, wanted: str, bundled: tuple[str, ...]) -> Decision:
    said = f"{OVERRIDE_VARIABLE}={raw}"
    if wanted == "cpu":
        reasons = (f"{said}: no CUDA variant; the CPU library serves CPU tensors",)
        if facts.torch.cuda_version is None:
            return Decision(None, "override", reasons, problem=Problem.OVERRIDE_CPU)
        evidence = (f"{said} turns kbit's CUDA support off although torch {facts.torch.version} has CUDA "
                    f"{facts.torch.cuda}: CUDA tensors will raise BackendUnavailableError.")
        fix = f"unset {OVERRIDE_VARIABLE} to use CUDA"
        return Decision(None, "override", reasons, (_explained(evidence, fix),), problem=Problem.OVERRIDE_CPU,
                        evidence=evidence, fix=fix)
    variant = facts.variant(wanted)
    if variant is None or variant.backend != "cuda":
        raise _errors.VariantNotBundledError(
            f"{said} asks for {wanted}, which this installation does not bundle; it bundles: "
            f"{_bundled_text(bundled)}.", fix=f"choose one of those, unset {OVERRIDE_VARIABLE}, or install a kbit "
            f"build that includes {wanted}")
    warnings = _override_warnings(facts, variant, said)
    cov = _coverage_of(facts, variant)
    reasons = (f"{said} selects {wanted} ({archs_text(variant)}, CUDA {cuda_version_text(variant.toolkit)})",
               *(f"GPU {c.gpu} runs {c}" for c in cov))
    return Decision(wanted, "override", reasons, warnings, coverage=cov)


def _override_warnings(facts: Facts, v: Variant, said: str) -> tuple[str, ...]:
    torch_cuda = facts.torch.cuda_version
    found = []
    if torch_cuda is None:
        found.append(f"{said} selects {v.name}, but torch {facts.torch.version} is a CPU-only build: no CUDA tensor "
                     f"can reach it (install a CUDA build of torch)")
    elif v.toolkit is not None and torch_cuda[0] != v.toolkit[0]:
        found.append(f"{said} selects {v.name} (CUDA {v.toolkit[0]}), but torch is built with CUDA {facts.torch.cuda}; "
                     f"kbit's default would pick a CUDA {torch_cuda[0]} variant")
    if facts.driver.status == "not_found":
        found.append(f"{said} selects {v.name}, but no NVIDIA driver was found ({facts.driver.library}): "
                     f"its functions will report 'no driver'")
    for problem in (_driver_problem(facts, v), _arch_problem(facts, v)):
        if problem:
            found.append(f"{said}: {problem}")
    return tuple(found)


def _decide_default(facts: Facts) -> Decision:
    major = facts.torch.cuda_version[0]
    candidates = sorted((v for v in facts.cuda_variants if v.toolkit and v.toolkit[0] == major),
                        key=lambda v: v.toolkit, reverse=True)
    head = f"torch {facts.torch.version} is built with CUDA {facts.torch.cuda}, so the candidates are the CUDA {major} variants"
    if not candidates:
        return _no_major(facts, major, head)
    if facts.driver.status == "not_found" or (facts.driver.status != "not_probed" and facts.driver.cuda_version is None):
        return _no_driver(facts, head, candidates)
    rejected = []
    for v in candidates:
        problem = _driver_problem(facts, v)
        kind = Problem.DRIVER_TOO_OLD
        if problem is None:
            problem, kind = _arch_problem(facts, v), Problem.ARCH_NOT_COVERED
        if problem is None:
            return _chosen(facts, v, head, candidates, tuple(rejected))
        rejected.append(Rejection(v.name, kind, problem))
    return _none_fits(facts, head, tuple(rejected))


def _chosen(facts: Facts, v: Variant, head: str, candidates: list[Variant], rejected: tuple[Rejection, ...]) -> Decision:
    reasons = [f"{head}, newest toolkit first: {', '.join(c.name for c in candidates)}"]
    reasons += [f"not {r.variant}: {r.why}" for r in rejected]
    drv = facts.driver
    why = f"{v.name}: CUDA {cuda_version_text(v.toolkit)} <= driver CUDA {cuda_version_text(drv.cuda_version)}"
    if drv.status == "not_probed":
        why = f"{v.name}: the driver was not asked"
    cov = _coverage_of(facts, v)
    if cov:
        why += "; " + "; ".join(f"GPU {c.gpu} runs {c}" for c in cov)
    elif drv.status != "not_probed":
        why += "; the driver reports no GPU" + (f" ({drv.errors[-1]})" if drv.errors else "")
    reasons.append(why)
    if major_minor_differs(facts, v):
        reasons.append(f"torch's CUDA {facts.torch.cuda} and {v.name}'s {cuda_version_text(v.toolkit)} may differ: "
                       f"kbit links the CUDA runtime statically, so only the driver has to support both")
    return Decision(v.name, "default", tuple(reasons), rejected=rejected, coverage=cov)


def major_minor_differs(facts: Facts, v: Variant) -> bool:
    return facts.torch.cuda_version is not None and v.toolkit is not None and facts.torch.cuda_version != v.toolkit


def _no_major(facts: Facts, major: int, head: str) -> Decision:
    others = ", ".join(v.name for v in facts.cuda_variants) or "none"
    evidence = (f"{head}, and this kbit installation bundles none (its CUDA variants: {others}); CUDA tensors "
                f"cannot be served.")
    fix = (f"install the torch build for a bundled CUDA version (e.g. pip install torch "
           f"--index-url https://download.pytorch.org/whl/cu<NNN>), or a kbit wheel with a CUDA {major} variant; "
           f"{OVERRIDE_VARIABLE}=<NNN> forces a bundled variant of another major")
    return _failed(Problem.NO_VARIANT_FOR_MAJOR, evidence, fix, head=head)


def _no_driver(facts: Facts, head: str, candidates: list[Variant]) -> Decision:
    detail = "; ".join(facts.driver.errors) or "no version reported"
    evidence = (f"{head} ({', '.join(c.name for c in candidates)}), but no usable NVIDIA driver was found "
                f"({facts.driver.library}: {detail}); CUDA tensors cannot exist here.")
    fix = ("install the NVIDIA driver (nvidia-smi must work), or on a machine without an NVIDIA GPU install the CPU "
           "build of torch")
    return _failed(Problem.NO_DRIVER, evidence, fix, head=head)


def _none_fits(facts: Facts, head: str, rejected: tuple[Rejection, ...]) -> Decision:
    too_old = all(r.problem is Problem.DRIVER_TOO_OLD for r in rejected)
    kind = Problem.DRIVER_TOO_OLD if too_old else Problem.ARCH_NOT_COVERED
    fix = ("update the NVIDIA driver to one whose CUDA version (nvidia-smi, top right) is at least the toolkit of a "
           "variant above") if too_old else _arch_fix(facts)
    evidence = f"{head}, and none can run here: " + "; ".join(r.why for r in rejected) + ". CUDA tensors cannot be served."
    return _failed(kind, evidence, fix, head=head, rejected=rejected)


def _failed(problem: Problem, evidence: str, fix: str, *, head: str | None = None, as_warning: bool = True,
            rejected: tuple[Rejection, ...] = ()) -> Decision:
    """A default decision without a variant: its text (evidence + fix) is the one warning, after the head reason,
    or (as_warning=False: nothing was attempted, so nothing to warn about) the one reason."""
    text = _explained(evidence, fix)
    if as_warning:
        return Decision(None, "default", (head,), (text,), rejected=rejected, problem=problem, evidence=evidence,
                        fix=fix)
    return Decision(None, "default", (text,), rejected=rejected, problem=problem, evidence=evidence, fix=fix)


def _arch_fix(facts: Facts) -> str:
    lowest = min((a for v in facts.cuda_variants for a in v.sass), default=None)
    old = [g for g in facts.driver.gpus if lowest is not None and g.sm < lowest]
    if old:
        return (f"{', '.join(f'sm_{g.sm}' for g in old)} is older than every bundled variant supports (lowest: "
                f"sm_{lowest}); use the GPU with another library or run kbit on CPU tensors")
    return ("install a kbit build whose variant covers the GPU (a newer toolkit adds newer archs, e.g. CUDA >= 12.8 "
            "for sm_100/sm_120), or update the driver so that a variant with PTX for an older arch can be used")
