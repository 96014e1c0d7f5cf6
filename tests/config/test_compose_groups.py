"""Every option of every config group composes with `distill` and validates; method presets set the groups they
claim; a group given on the command line wins over the preset; validation reports every problem at once."""

from __future__ import annotations

import pytest
from conftest import compose_distill, typed_config
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf
from omegaconf.errors import ValidationError

from egad_cli.config import ConfigError, DistillConfig, conf_dir, validate
from egad_cli.config.policies import POLICY_REGISTRIES

GROUPS = ("teacher", "student", "dataset", "method", "loss", "difficulty", "curriculum", "temperature", "weighting",
          "branch", "trainer", "eval", "logging", "debug")
#: groups whose options are config nodes registered from egad_cli/config/policies.py, not YAML files
POLICY_GROUPS = {r.group: r for r in POLICY_REGISTRIES}

# Options that cannot validate without a path / id the user must give: the key validate must name.
NEEDS_PATH = {
    ("teacher", "hf"): ("teacher.path", ["teacher.path=/models/some-model"]),
    ("teacher", "gguf"): ("teacher.path", ["teacher.path=/models/some-model.gguf"]),
    ("student", "hf"): ("student.path", ["student.path=/models/some-student"]),
    ("dataset", "text"): ("dataset.paths", ["dataset.paths=[corpus/*.txt]"]),
    ("dataset", "jsonl"): ("dataset.paths", ["dataset.paths=[sft.jsonl]"]),
    ("dataset", "hf"): ("dataset.hf_name", ["dataset.hf_name=some/dataset"]),
}


def group_options(group: str) -> list[str]:
    """The options Hydra offers for `group` (YAML files and registered nodes alike): what --help lists."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from egad_cli.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        options = GlobalHydra.instance().config_loader().get_group_options(group)
    GlobalHydra.instance().clear()
    return sorted(options)


OPTIONS = [(group, option) for group in GROUPS for option in group_options(group)]


def test_every_group_is_covered():
    """A group added to conf/ or to the registries without being added here (and so without a compose test)
    fails this test."""
    on_disk = {p.name for p in conf_dir().iterdir() if p.is_dir()} - {"hydra"}  # hydra/: Hydra's own groups
    assert on_disk | set(POLICY_GROUPS) == set(GROUPS)
    assert not on_disk & set(POLICY_GROUPS), "a policy group's options come from its registry, not YAML files"
    for group in GROUPS:
        assert any(g == group for g, _ in OPTIONS), f"group {group} has no option"


@pytest.mark.parametrize("group", sorted(POLICY_GROUPS))
def test_policy_group_options_are_exactly_the_registry(group):
    """One list of choices: what Hydra offers (--help, composition, errors) is the registry."""
    assert group_options(group) == sorted(POLICY_GROUPS[group].names())
    with pytest.raises(MissingConfigException) as err:
        compose_distill([f"{group}=nope"])
    for name in POLICY_GROUPS[group].names():
        assert name in str(err.value)


def test_design_choices_exist():
    """The choices DESIGN §2 lists (at least) are all present."""
    have = {}
    for g, o in OPTIONS:
        have.setdefault(g, set()).add(o)
    assert {"smollm2", "llama", "qwen", "hf", "gguf", "random"} <= have["teacher"]
    assert {"tiny", "small", "from_teacher", "hf"} <= have["student"]
    assert {"pystdlib", "text", "jsonl", "hf"} <= have["dataset"]
    assert {"egad", "kd", "rkl", "jsd", "skew_kl", "eakd", "adakd", "ce", "tvd"} <= have["method"]
    assert {"forward_kl", "reverse_kl", "jsd", "skew_fkl", "skew_rkl", "tvd"} <= have["loss"]
    assert {"none", "linear", "cosine", "sqrt", "step"} <= have["curriculum"]
    assert {"fixed", "entropy", "idts"} <= have["temperature"]
    assert {"logits_only", "dual"} <= have["branch"]
    assert {"smoke"} <= have["debug"]
    assert {"rank", "normalized", "running_quantile"} <= have["difficulty"]
    assert {"uniform", "eakd", "adakd"} <= have["weighting"]


def test_default_config_is_typed_and_valid():
    cfg = compose_distill()
    assert OmegaConf.get_type(cfg) is DistillConfig  # composed against the registered schema
    typed = validate(cfg)
    assert isinstance(typed, DistillConfig)
    # the embedded defaults of DESIGN §2
    assert (typed.teacher.name, typed.student.name, typed.dataset.name, typed.method.name) == \
        ("smollm2", "tiny", "pystdlib", "egad")


@pytest.mark.parametrize("group,option", OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_option_composes_and_validates(group, option):
    # the default method (egad) has an entropy curriculum, which a token-selecting weighting refuses
    extra = ["curriculum=none"] if group == "weighting" and POLICY_GROUPS[group][option].selects_tokens else []
    cfg = compose_distill([f"{group}={option}", *extra])
    assert OmegaConf.get_type(cfg) is DistillConfig
    if (group, option) in NEEDS_PATH:
        key, fix = NEEDS_PATH[(group, option)]
        with pytest.raises(ConfigError) as err:
            validate(cfg)
        assert key in str(err.value)
        typed = validate(compose_distill([f"{group}={option}", *fix]))  # given the path, it validates
    else:
        typed = validate(cfg)
    if group in ("teacher", "student", "dataset", "method", *POLICY_GROUPS):
        field = POLICY_GROUPS[group].key if group in POLICY_GROUPS else "name"
        assert getattr(getattr(typed, group), field) == option  # the option really selected that preset


def test_smoke_selects_tiny_random_models_and_a_short_run():
    cfg = typed_config(["debug=smoke"])
    assert cfg.teacher.source == "random"
    assert cfg.student.init == "scratch" and cfg.student.arch.num_layers == 2
    assert 32 <= cfg.student.arch.hidden_size <= 64
    assert cfg.trainer.max_steps <= 10
    assert cfg.trainer.ckpt_every > 0 and cfg.logging.progress is False


# ------------------------------------------------------------------------------------------ method presets

PRESETS = {
    # method: (loss, temperature, curriculum schedule, branch, weighting)
    "kd": ("forward_kl", "fixed", "none", "logits_only", "uniform"),
    "egad": ("forward_kl", "entropy", "linear", "dual", "uniform"),
    "adakd": ("reverse_kl", "idts", "none", "logits_only", "adakd"),
    "eakd": ("forward_kl", "fixed", "none", "logits_only", "eakd"),
    "rkl": ("reverse_kl", "fixed", "none", "logits_only", "uniform"),
    "jsd": ("jsd", "fixed", "none", "logits_only", "uniform"),
    "skew_kl": ("skew_fkl", "fixed", "none", "logits_only", "uniform"),
    "tvd": ("tvd", "fixed", "none", "logits_only", "uniform"),
    "ce": ("forward_kl", "fixed", "none", "logits_only", "uniform"),
    "gkd": ("jsd", "fixed", "none", "logits_only", "uniform"),
    "onpolicy": ("reverse_kl", "fixed", "none", "logits_only", "uniform"),
    "eopd": ("entropy_gated_kl", "fixed", "none", "logits_only", "uniform"),
    # the study's ablation arms: kd plus one EGAD mechanism, egad minus one
    "egad_only_curriculum": ("forward_kl", "fixed", "linear", "logits_only", "uniform"),
    "egad_only_temperature": ("forward_kl", "entropy", "none", "logits_only", "uniform"),
    "egad_only_branch": ("forward_kl", "fixed", "none", "dual", "uniform"),
    "egad_no_curriculum": ("forward_kl", "entropy", "none", "dual", "uniform"),
    "egad_no_temperature": ("forward_kl", "fixed", "linear", "dual", "uniform"),
    "egad_no_branch": ("forward_kl", "entropy", "linear", "logits_only", "uniform"),
    # the temperature study's arms: egad with another temperature design
    "egad_inverse_temperature": ("forward_kl", "entropy", "linear", "dual", "uniform"),
    "egad_unweighted_temperature": ("forward_kl", "entropy", "linear", "dual", "uniform"),
    "egad_target_entropy": ("forward_kl", "target_entropy", "linear", "dual", "uniform"),
}
#: what the temperature study's presets set beyond their groups
TEMPERATURE_KNOBS = {"egad_inverse_temperature": {"kappa": -0.5, "scale": "tau2"},
                     "egad_unweighted_temperature": {"kappa": 0.5, "scale": "none"},
                     "egad_target_entropy": {"target": None, "scale": "none"}, "egad": {"kappa": 0.5, "scale": "tau2"}}
#: the on-policy share each preset sets (every other preset: 0, off-policy)
LMBDA = {"gkd": 0.5, "onpolicy": 1.0, "eopd": 1.0}


def test_every_method_preset_is_in_the_table():
    assert set(PRESETS) == set(group_options("method"))


@pytest.mark.parametrize("method", sorted(PRESETS))
def test_method_preset_sets_its_groups(method):
    loss, temperature, schedule, branch, weighting = PRESETS[method]
    cfg = typed_config([f"method={method}"])
    assert cfg.method.name == method
    assert cfg.loss.name == loss
    assert cfg.temperature.name == temperature
    assert cfg.curriculum.schedule == schedule
    assert cfg.branch.name == branch
    assert cfg.weighting.name == weighting
    assert cfg.onpolicy.lmbda == LMBDA.get(method, 0.0)
    for key, value in TEMPERATURE_KNOBS.get(method, {}).items():
        assert getattr(cfg.temperature, key) == value, f"{method}: temperature.{key}"


def test_gkd_is_symmetric_jsd_sampled_at_unit_temperature_and_lambda_wins_from_the_command_line():
    cfg = typed_config(["method=gkd"])
    assert cfg.loss.beta == 0.5 and cfg.onpolicy.temperature == 1.0
    assert typed_config(["method=gkd", "onpolicy.lmbda=0.9"]).onpolicy.lmbda == 0.9
    assert typed_config(["method=egad", "onpolicy.lmbda=1"]).onpolicy.lmbda == 1.0


def test_presets_override_non_default_groups_too():
    """The preset wins over the defaults list whatever order Hydra sees them in (kd after egad's defaults)."""
    cfg = typed_config(["method=kd"])
    assert (cfg.curriculum.schedule, cfg.temperature.name, cfg.branch.name) == ("none", "fixed", "logits_only")


def test_ce_preset_trains_on_labels_only():
    cfg = typed_config(["method=ce"])
    assert cfg.method.kd_weight == 0 and cfg.method.ce_weight == 1


@pytest.mark.parametrize("overrides,check", [
    (["method=kd", "loss=reverse_kl"], lambda c: c.loss.name == "reverse_kl"),
    (["loss=reverse_kl", "method=kd"], lambda c: c.loss.name == "reverse_kl"),  # order on the line does not matter
    (["method=egad", "temperature=fixed"], lambda c: c.temperature.name == "fixed"),
    (["method=egad", "branch=logits_only"], lambda c: c.branch.name == "logits_only"),
    (["method=egad", "curriculum=cosine"], lambda c: c.curriculum.schedule == "cosine"),
    (["method=adakd", "loss=jsd"], lambda c: c.loss.name == "jsd" and c.weighting.name == "adakd"),
    (["method=kd", "temperature.base=2"], lambda c: c.temperature.base == 2.0 and c.temperature.name == "fixed"),
    (["method=kd", "loss=tvd"], lambda c: c.loss.name == "tvd"),
])
def test_command_line_group_wins_over_preset(overrides, check):
    assert check(typed_config(overrides))


def test_debug_smoke_does_not_override_an_explicit_teacher():
    cfg = typed_config(["debug=smoke", "teacher=llama"])
    assert cfg.teacher.name == "llama" and cfg.teacher.source == "hf"


# ------------------------------------------------------------------------------------------ validation


def test_negative_lr_names_the_key():
    with pytest.raises(ConfigError) as err:
        typed_config(["trainer.lr=-1e-3"])
    assert "trainer.lr" in str(err.value)


def test_setting_a_policy_name_alone_is_refused_with_the_group_choice_to_use():
    """`loss.name=tvd` on a forward_kl node would keep forward_kl's fields: the error says `loss=tvd`."""
    with pytest.raises(ConfigError) as err:
        typed_config(["method=kd", "loss.name=tvd"])
    assert "loss.name" in str(err.value) and "loss=tvd" in str(err.value)


def test_a_field_of_another_option_fails_at_composition():
    """temperature.kappa exists only under temperature=entropy."""
    with pytest.raises(ConfigCompositionException) as err:
        compose_distill(["method=kd", "temperature.kappa=0.3"])
    assert "temperature.kappa" in str(err.value)


def test_all_problems_reported_at_once():
    bad = ["trainer.lr=-1", "trainer.batch_size=0", "loss=jsd", "loss.beta=2", "branch.q=1.5",
           "dataset.block_size=4", "curriculum.rho=0", "temperature.base=0"]
    with pytest.raises(ConfigError) as err:
        typed_config(bad)
    msg = str(err.value)
    for key in ("trainer.lr", "trainer.batch_size", "loss.beta", "branch.q", "dataset.block_size",
                "curriculum.rho", "temperature.base"):
        assert key in msg, f"{key} missing from:\n{msg}"
    assert msg.startswith(f"{len(bad) - 1} config problem(s)")  # loss=jsd is a choice, not a problem


def test_choice_errors_list_valid_choices():
    with pytest.raises(ConfigError) as err:
        typed_config(["loss.name=kl_forward", "trainer.device=tpu"])
    msg = str(err.value)
    assert "loss.name" in msg and "forward_kl" in msg and "reverse_kl" in msg
    assert "trainer.device" in msg and "cuda" in msg


def test_adakd_with_curriculum_is_refused():
    with pytest.raises(ConfigError) as err:
        typed_config(["method=adakd", "curriculum=linear"])
    assert "curriculum.schedule" in str(err.value)


def test_type_errors_fail_at_composition_naming_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as err:
        compose_distill(["trainer.lr=fast"])
    assert "trainer.lr" in str(err.value)
    assert "Float" in str(err.value.__cause__)  # the schema's type, from OmegaConf


def test_unknown_key_fails_at_composition():
    with pytest.raises(ConfigCompositionException) as err:
        compose_distill(["trainer.learning_rate=1e-3"])
    assert "trainer.learning_rate" in str(err.value)


def test_unknown_group_choice_lists_the_options():
    with pytest.raises(MissingConfigException) as err:
        compose_distill(["teacher=nope"])
    msg = str(err.value)
    assert "teacher/nope" in msg
    assert "smollm2" in msg and "random" in msg


def test_the_slurm_launcher_example_composes():
    """conf/hydra/launcher/slurm.yaml extends the submitit plugin's SLURM launcher (the `sweep` extra)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs pip install 'egad-cli[sweep]'")
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from egad_cli.config import register_schemas

    register_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("distill", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=1"],
                      return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 8, 8)
