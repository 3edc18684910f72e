"""The shipped cloud cluster configs (experiments/clusters/) hold together, checked offline.

`aws-gpu.yaml` goes through Ray's own cluster-config validation, the steps `ray up` takes before it
talks to AWS: `prepare_config` (merge with Ray's AWS defaults) and `validate_config`
(ray-schema.json, then the node-type checks). Broken copies must be rejected by the same code,
so the validation is shown to bite. Its documented sweep line (a comment) must name a spec of
this repository, with results and data on the EFS mount.

`kuberay-rayjob.yaml` is a KubeRay RayJob: its entrypoint runs `msc sweep` on a spec of this
repository (paths relative to the repository root, which the image holds), every container names
an image, the GPU workers request `nvidia.com/gpu`, and the storage and data paths lie on a
volume that the head and every worker mount from one claim. The same checks reject broken copies.

No network, no cloud account, no Ray process.
"""
from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path, PurePosixPath

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTERS = REPO_ROOT / "experiments" / "clusters"
AWS_CONFIG = CLUSTERS / "aws-gpu.yaml"
RAYJOB = CLUSTERS / "kuberay-rayjob.yaml"
PAPER_SPEC_BASE = REPO_ROOT / "experiments" / "sweeps" / "shared" / "paper_cluster.yaml"
OPTIONS_WITH_VALUE = {"--address", "--storage", "--json"}
GPU = "nvidia.com/gpu"


def load_yaml(path: Path) -> dict:
    """The YAML document at `path`; raises yaml.YAMLError on bad YAML."""
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# --- the `msc sweep` command lines -------------------------------------------------------------

def split_commands(line: str) -> list[list[str]]:
    """The simple commands of a shell line, split at `&&`, `||` and `;`, `bash -c '...'` opened.

    Raises ValueError (from shlex) on unbalanced quotes.
    """
    words = shlex.split(line)
    if words[:2] in (["bash", "-c"], ["sh", "-c"]) and len(words) == 3:
        return split_commands(words[2])
    commands, current = [], []
    for word in words:
        if word in ("&&", "||", ";"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in [*commands, current] if c]


def msc_sweep_args(line: str) -> list[str]:
    """The arguments after `msc sweep` in a shell line, or after `make sweep` expanded as the
    Makefile does (`SPEC=` first, then the words of `ARGS=`). Raises ValueError when the line
    runs neither."""
    for words in split_commands(line):
        words = words[1:] if words[:1] == ["exec"] else words
        if words[:2] == ["msc", "sweep"]:
            return words[2:]
        if words[:2] == ["make", "sweep"]:
            variables = dict(w.split("=", 1) for w in words[2:] if "=" in w)
            spec = [variables["SPEC"]] if "SPEC" in variables else []
            return spec + shlex.split(variables.get("ARGS", ""))
    raise ValueError(f"no `msc sweep` or `make sweep` in {line!r}")


def parse_sweep_args(args: list[str]) -> dict:
    """{'spec', 'options', 'overrides'} of `msc sweep` arguments: options (with their values)
    and `key=value` overrides may come in any order, as `msc` takes them. Raises ValueError when
    an option lacks its value."""
    spec, options, overrides = None, {}, {}
    words = iter(args)
    for word in words:
        if word.startswith("--"):
            name, eq, value = word.partition("=")
            if not eq and name in OPTIONS_WITH_VALUE:
                value = next(words, None)
                if value is None:
                    raise ValueError(f"{name} without a value in {args}")
            options[name] = value if (eq or name in OPTIONS_WITH_VALUE) else True
        elif "=" in word:
            key, _, value = word.partition("=")
            overrides[key] = value
        elif spec is None:
            spec = word
    return {"spec": spec, "options": options, "overrides": overrides}


def sweep_problems(parsed: dict, shared: str) -> list[str]:
    """What is wrong with a cloud sweep command: a spec missing from the repository, storage or
    data off the shared path `shared`."""
    problems = []
    spec = parsed["spec"]
    if not spec or not (REPO_ROOT / spec).is_file():
        problems.append(f"the spec {spec!r} is not a file of the repository")
    elif not load_yaml(REPO_ROOT / spec).get("name"):
        problems.append(f"the spec {spec} has no name")
    for what, path in (("--storage", parsed["options"].get("--storage")),
                       ("data.root", parsed["overrides"].get("data.root"))):
        if not path or not is_under(path, shared):
            problems.append(f"{what} {path!r} is not under the shared path {shared}")
    return problems


def is_under(path: str, folder: str) -> bool:
    """True when the absolute POSIX `path` is `folder` or lies below it."""
    return PurePosixPath(path).is_relative_to(PurePosixPath(folder))


# --- the AWS cluster-launcher config -------------------------------------------------------------

def ray_validate(config: dict) -> dict:
    """`config` as `ray up` resolves it before contacting AWS: Ray's defaults filled in, then
    Ray's schema and node-type checks. Raises jsonschema.ValidationError or ValueError."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def nfs_mount_point(config: dict) -> str:
    """The folder the initialization commands mount NFS (EFS) on; raises ValueError if none."""
    for command in config.get("initialization_commands", []):
        for words in split_commands(command):
            if "mount" in words and "nfs4" in words:
                return words[-1]
    raise ValueError("no `mount -t nfs4 ... DIR` in initialization_commands")


def documented_sweep_lines(text: str) -> list[str]:
    """The `make sweep` / `msc sweep` lines of a config's comments, from the command on."""
    return [m.group(0) for m in re.finditer(r"(?:cd \S+ && )?(?:make|msc) sweep [^\n]*", text)]


def trials_per_node(node_resources: dict, trial: dict) -> int:
    """How many trials of `trial` ({cpu, gpu}) fit on a node with `node_resources`."""
    fits = [node_resources.get("CPU", 0) // trial["cpu"]]
    if trial.get("gpu"):
        fits.append(int(node_resources.get("GPU", 0) / trial["gpu"]))
    return int(min(fits))


@pytest.fixture
def aws_config() -> dict:
    return load_yaml(AWS_CONFIG)


def test_launcher_config_passes_rays_own_validation(aws_config):
    prepared = ray_validate(aws_config)
    assert prepared["provider"]["type"] == "aws" and prepared["provider"]["region"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


def _misspell_top_level_key(config):
    config["setup_comands"] = config.pop("setup_commands")


def _drop_worker_resources(config):
    del config["available_node_types"]["gpu_worker"]["resources"]


def _fractional_gpu_resource(config):
    config["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5


def _unknown_head_type(config):
    config["head_node_type"] = "cpu_head"


def _min_workers_above_max(config):
    config["available_node_types"]["gpu_worker"]["min_workers"] = config["max_workers"] + 1


@pytest.mark.parametrize("breakage, error, message", [
    (_misspell_top_level_key, jsonschema.ValidationError, "'setup_comands' was unexpected"),
    (_drop_worker_resources, jsonschema.ValidationError, "'resources' is a required property"),
    (_fractional_gpu_resource, jsonschema.ValidationError, "0.5 is not of type 'integer'"),
    (_unknown_head_type, ValueError, "`head_node_type` must be one of"),
    (_min_workers_above_max, ValueError, "smaller than the sum of `min_workers`"),
])
def test_rays_validation_rejects_a_broken_copy(aws_config, breakage, error, message):
    broken = copy.deepcopy(aws_config)
    breakage(broken)
    with pytest.raises(error, match=re.escape(message)):
        ray_validate(broken)


def test_launcher_has_a_cpu_head_and_gpu_workers_that_fit_the_paper_trials(aws_config):
    types = aws_config["available_node_types"]
    head = types[aws_config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [t for name, t in types.items()
               if name != aws_config["head_node_type"] and t["resources"].get("GPU", 0) >= 1]
    assert workers, "no worker node type declares a GPU"
    trial = load_yaml(PAPER_SPEC_BASE)
    for worker in workers:
        assert 0 <= worker["min_workers"] <= worker["max_workers"] <= aws_config["max_workers"]
        assert trials_per_node(worker["resources"], trial["resources"]) >= 1
    capacity = sum(w["max_workers"] * trials_per_node(w["resources"], trial["resources"])
                   for w in workers)
    assert capacity >= trial["max_concurrent_trials"]


def test_launcher_mounts_shared_storage_installs_the_project_and_starts_ray(aws_config):
    shared = nfs_mount_point(aws_config)
    assert shared.startswith("/")
    assert any(re.search(r"\bmake (-C \S+ )?setup\b", c) for c in aws_config["setup_commands"])
    head_start = " ".join(aws_config["head_start_ray_commands"])
    assert "ray start --head" in head_start
    assert "ray start --address=$RAY_HEAD_IP:6379" in " ".join(
        aws_config["worker_start_ray_commands"])
    stores = re.findall(r"--(?:backend-store-uri sqlite:///|artifacts-destination )(\S+)",
                        head_start)
    assert len(stores) == 2 and all(is_under(path, shared) for path in stores), stores


def test_launcher_documented_sweep_names_a_spec_and_shared_paths(aws_config):
    lines = documented_sweep_lines(AWS_CONFIG.read_text(encoding="utf-8"))
    assert lines, f"{AWS_CONFIG.name} documents no sweep command"
    shared = nfs_mount_point(aws_config)
    for line in lines:
        assert sweep_problems(parse_sweep_args(msc_sweep_args(line)), shared) == [], line


def test_sweep_checks_reject_a_missing_spec_and_local_storage():
    line = ("make sweep SPEC=experiments/sweeps/nope.yaml "
            "ARGS='--storage /tmp/sweeps data.root=/shared/data'")
    parsed = parse_sweep_args(msc_sweep_args(line))
    problems = sweep_problems(parsed, "/shared")
    assert len(problems) == 2
    assert "nope.yaml" in problems[0] and "--storage '/tmp/sweeps'" in problems[1]


# --- the KubeRay RayJob --------------------------------------------------------------------------

def pod_specs(rayjob: dict) -> list[tuple[str, dict]]:
    """(group, pod spec) of the head group, then of every worker group."""
    cluster = rayjob["spec"]["rayClusterSpec"]
    pods = [("head", cluster["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in cluster.get("workerGroupSpecs", [])]
    return pods


def all_containers(rayjob: dict) -> list[tuple[str, dict]]:
    """(where, container) of every container and init container the RayJob declares."""
    pods = pod_specs(rayjob)
    submitter = rayjob["spec"].get("submitterPodTemplate")
    if submitter:
        pods.append(("submitter", submitter["spec"]))
    return [(f"{group}/{c.get('name')}", c) for group, pod in pods
            for c in [*pod.get("initContainers", []), *pod.get("containers", [])]]


def gpu_request(container: dict) -> int:
    """The container's `nvidia.com/gpu` limit (0 if none); raises ValueError when its request
    differs from its limit (Kubernetes requires them equal for extended resources)."""
    resources = container.get("resources", {})
    limit = int(resources.get("limits", {}).get(GPU, 0))
    request = resources.get("requests", {}).get(GPU)
    if request is not None and int(request) != limit:
        raise ValueError(f"{container.get('name')}: {GPU} request {request} != limit {limit}")
    return limit


def claim_mounted_at(pod: dict, path: str) -> str | None:
    """The PersistentVolumeClaim whose volume the pod's Ray container (the first) mounts at or
    above `path`, or None."""
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
              for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
    for mount in pod["containers"][0].get("volumeMounts", []):
        if mount["name"] in claims and is_under(path, mount["mountPath"]):
            return claims[mount["name"]]
    return None


def rayjob_problems(rayjob: dict) -> list[str]:
    """Everything the checks find wrong with a RayJob manifest (empty when it is right)."""
    problems = []
    if rayjob.get("apiVersion") != "ray.io/v1" or rayjob.get("kind") != "RayJob":
        problems.append(f"not a ray.io/v1 RayJob: {rayjob.get('apiVersion')} {rayjob.get('kind')}")
    if rayjob["spec"].get("shutdownAfterJobFinishes") is not True:
        problems.append("shutdownAfterJobFinishes is not true")
    problems += [f"{where}: no image" for where, c in all_containers(rayjob)
                 if not isinstance(c.get("image"), str) or not c["image"].strip()]
    workers = pod_specs(rayjob)[1:]
    if not workers or not all(gpu_request(pod["containers"][0]) >= 1 for _, pod in workers):
        problems.append(f"not every worker group requests {GPU}")
    parsed = parse_sweep_args(msc_sweep_args(rayjob["spec"]["entrypoint"]))
    problems += sweep_problems(parsed, "/")
    for path in (parsed["options"].get("--storage"), parsed["overrides"].get("data.root")):
        claims = {group: claim_mounted_at(pod, path or "") for group, pod in pod_specs(rayjob)}
        if None in claims.values() or len(set(claims.values())) != 1:
            problems.append(f"{path!r} is not on one claim every Ray pod mounts: {claims}")
    return problems


@pytest.fixture
def rayjob() -> dict:
    return load_yaml(RAYJOB)


def test_rayjob_runs_msc_sweep_on_a_repo_spec_with_images_gpus_and_shared_storage(rayjob):
    assert rayjob_problems(rayjob) == []
    parsed = parse_sweep_args(msc_sweep_args(rayjob["spec"]["entrypoint"]))
    assert parsed["spec"].startswith("experiments/sweeps/")


def test_rayjob_ray_containers_share_one_image(rayjob):
    images = {pod["containers"][0]["image"] for _, pod in pod_specs(rayjob)}
    assert len(images) == 1, images


def _storage_off_the_volume(rayjob):
    spec = rayjob["spec"]
    spec["entrypoint"] = spec["entrypoint"].replace("--storage /shared/", "--storage /tmp/")


def _spec_not_in_repo(rayjob):
    spec = rayjob["spec"]
    spec["entrypoint"] = spec["entrypoint"].replace("sweeps/tvr.yaml", "sweeps/tvr2.yaml")


def _worker_without_gpu(rayjob):
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    for key in ("limits", "requests"):
        worker["containers"][0]["resources"][key].pop(GPU)


def _worker_without_the_claim(rayjob):
    worker = rayjob["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["volumeMounts"] = []


def _empty_image(rayjob):
    head = rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    head["containers"][-1]["image"] = ""


def _cluster_kept(rayjob):
    rayjob["spec"]["shutdownAfterJobFinishes"] = False


@pytest.mark.parametrize("breakage, expected", [
    (_storage_off_the_volume, "'/tmp/sweeps' is not on one claim"),
    (_spec_not_in_repo, "tvr2.yaml"),
    (_worker_without_gpu, GPU),
    (_worker_without_the_claim, "not on one claim"),
    (_empty_image, "no image"),
    (_cluster_kept, "shutdownAfterJobFinishes"),
])
def test_rayjob_checks_reject_a_broken_copy(rayjob, breakage, expected):
    broken = copy.deepcopy(rayjob)
    breakage(broken)
    problems = rayjob_problems(broken)
    assert any(expected in p for p in problems), problems
