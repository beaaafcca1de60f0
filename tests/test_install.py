"""The installed environment: nothing in the repository shadows a distribution, and it is the pinned set.

transformers 5.25 imports the PyPI package `kernels` at start; a regular package `kernels/` at the
repository root was found first whenever the root was on sys.path and broke every run
(kernels/README.md). constraints.txt holds what CI tested; `make setup` installs from it.
"""

import importlib.metadata as md
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import deps  # noqa: E402  (tools/ is a folder of scripts, not a package)

OWN = {"ct-train"}


def _top_level_names_of_installed_distributions() -> dict:
    """import name -> distributions providing it, ours left out."""
    return {
        name: dists
        for name, dists in md.packages_distributions().items()
        if not {deps.canonical(d) for d in dists} <= OWN
    }


def _repo_root_importables() -> list:
    """What `import NAME` finds as a module or regular package when the root is on sys.path."""
    found = []
    for p in ROOT.iterdir():
        if p.is_dir() and (p / "__init__.py").is_file():
            found.append(p.name)
        elif p.is_file() and p.suffix == ".py":
            found.append(p.stem)
    return found


def _inside(path: str, folder: pathlib.Path) -> bool:
    return pathlib.Path(path).resolve().is_relative_to(folder.resolve())


def test_no_repo_root_package_or_module_has_the_name_of_an_installed_distribution():
    installed = _top_level_names_of_installed_distributions()
    clashes = {name: installed[name] for name in _repo_root_importables() if name in installed}
    assert not clashes, f"repository root shadows installed distributions: {clashes}"


def test_kernels_folder_is_no_regular_package_and_ct_train_kernels_reaches_it():
    # The design card's top-level kernels/ holds the code; without __init__.py it is only a namespace
    # portion, and ct_train/kernels (a symlink) makes it the subpackage ct_train.kernels.
    assert (ROOT / "kernels" / "cross_entropy.py").is_file()
    assert not (ROOT / "kernels" / "__init__.py").exists()
    from ct_train.kernels import cross_entropy

    assert pathlib.Path(cross_entropy.__file__).resolve() == (ROOT / "kernels" / "cross_entropy.py").resolve()


def _kernels_distribution_file() -> pathlib.Path:
    try:
        dist = md.distribution("kernels")
    except md.PackageNotFoundError:
        pytest.skip("the PyPI `kernels` is not installed (transformers < 5.25 does not need it)")
    return pathlib.Path(dist.locate_file("kernels/__init__.py")).resolve()


def test_import_kernels_in_this_pytest_process_is_the_installed_distribution():
    expected = _kernels_distribution_file()
    # The condition that broke runs: pytest put the repository root on sys.path (rootdir insertion).
    assert str(ROOT) in [str(pathlib.Path(p).resolve()) for p in sys.path if p]
    import kernels

    assert pathlib.Path(kernels.__file__).resolve() == expected
    assert not _inside(kernels.__file__, ROOT / "kernels")


def test_python_started_in_the_repo_root_imports_the_installed_kernels_and_transformers_hub_kernels():
    # `python -m ct_train` from the root puts the root first on sys.path, as `-c` does here.
    expected = _kernels_distribution_file()
    code = (
        "import kernels, ct_train.kernels.cross_entropy as ce\n"
        "import transformers.integrations.hub_kernels\n"  # what died with `cannot import name 'CUDAProperties'`
        "print(kernels.__file__)\n"
        "print(ce.linear_cross_entropy.__module__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kernels_file, module = out.stdout.split()
    assert pathlib.Path(kernels_file).resolve() == expected
    assert module == "ct_train.kernels.cross_entropy"


def _requirement_closure(name: str, extras: tuple = ()) -> set:
    """Canonical names of the installed distributions `name[extras]` needs, itself included."""
    from packaging.requirements import Requirement

    seen, todo = set(), [(name, extras)]
    while todo:
        dist_name, dist_extras = todo.pop()
        key = deps.canonical(dist_name)
        if key in seen:
            continue
        try:
            requires = md.requires(dist_name) or []
        except md.PackageNotFoundError:
            continue  # an optional dependency this platform does not install
        seen.add(key)
        for line in requires:
            req = Requirement(line)
            envs = [{"extra": e} for e in dist_extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, tuple(req.extras)))
    return seen


def test_the_installed_dependencies_are_the_pinned_versions():
    pins = deps.read_pins()
    needed = _requirement_closure("ct_train", ("dev",)) - deps.UNPINNED
    torch_decides = deps.torch_exact_pins()  # a CUDA torch build pins its own triton / nvidia-*
    wrong = {}
    for name in sorted(needed):
        version = md.version(name)
        if name in torch_decides and torch_decides[name] == version:
            continue
        if pins.get(name) != version:
            wrong[name] = f"installed {version}, pinned {pins.get(name, 'nothing')}"
    assert not wrong, f"the environment is not constraints.txt (make setup, or make upgrade-deps): {wrong}"
    assert {"transformers", "deepspeed", "peft", "datasets", "hydra-core", "omegaconf", "accelerate"} <= set(pins)
    assert "torch" not in pins  # the Makefile's TORCH pins it


def test_for_install_drops_only_the_pins_a_torch_build_requires_otherwise(monkeypatch, tmp_path):
    pinned = tmp_path / "constraints.txt"
    pinned.write_text("# header\ntriton==3.9.0\nsympy==1.14.0\ntransformers==5.25.0\n")
    monkeypatch.setattr(deps, "CONSTRAINTS", pinned)
    monkeypatch.setattr(deps, "torch_exact_pins", lambda: {"triton": "3.6.0", "sympy": "1.14.0"})
    text = deps.for_install()
    assert "triton" not in text
    assert "sympy==1.14.0" in text and "transformers==5.25.0" in text


def test_a_malformed_constraints_line_is_named_with_its_line(tmp_path):
    bad = tmp_path / "constraints.txt"
    bad.write_text("torch==2.13.0\ntransformers>=5\n")
    with pytest.raises(SystemExit, match=r"constraints.txt:2: expected `name==version`"):
        deps.read_pins(bad)


def test_readme_shows_the_pinned_versions():
    readme = (ROOT / "README.md").read_text()
    pins = deps.read_pins(ROOT / "constraints.txt")
    assert deps.readme_table(pins, readme) == readme, "README.md's tested versions are not constraints.txt's"
    assert f"| transformers | {pins['transformers']} |" in readme
    # and the rewrite finds its rows: other pins change them
    assert "| DeepSpeed | 9.9.9 |" in deps.readme_table({**pins, "deepspeed": "9.9.9"}, readme)
