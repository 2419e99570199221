"""What the configuration of every study kind shares: its fields, grid, checks and files.

A kind's configuration is a frozen dataclass deriving from :class:`GridConfig` (the data set
and its split, the seeds, the models as :class:`ModelPlan`, their training, the measures and
the dtype, plus the kind's own axis); it fixes everything that decides a study's results, is
written to ``DIR/study.json`` and compared there on every resume. How the study is run
(device, threads, progress bars, where the data files are) is not part of it.

Here too: the checks every kind makes alike (:func:`common_problems`), a kind's presets by
name (:class:`Presets`), and JSON config files and stored configurations
(:func:`config_from_mapping`, :func:`read_config_file`, :func:`stored_config`). The kinds'
own configurations and presets live in their folders, e.g.
:mod:`minsharp.study.randomized_labels.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from minsharp.data.datasets import DATASETS, canonical_name
from minsharp.errors import MinsharpError, StudyError
from minsharp.measures import spec
from minsharp.models import ZOO
from minsharp.training import TrainingConfig

#: Training settings a study or a model may set: the fields of
#: :class:`~minsharp.training.TrainingConfig` except ``seed``, which each run takes from its grid
#: seed.
TRAINING_KEYS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(TrainingConfig) if f.name != "seed"
)

#: Floating dtypes a study may compute in.
DTYPES: tuple[str, ...] = ("float32", "float64")

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


@dataclass(frozen=True)
class ModelPlan:
    """One network of the grid: a zoo model with its options and its own training settings.

    Attributes:
        name: the model's value on the grid's ``model`` axis and in run ids (letters,
            digits, ``_``, ``.``, ``-``).
        zoo: the :data:`minsharp.models.ZOO` entry it is built from.
        options: the zoo model's options (e.g. ``{"hidden": [128, 128]}``).
        training: training settings that override the study's for this model (e.g. the
            paper's lr 0.01 and 1 000 epochs for LeNet); keys of :data:`TRAINING_KEYS`.
    """

    name: str
    zoo: str
    options: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain JSON types."""
        return {
            "name": self.name,
            "zoo": self.zoo,
            "options": copy.deepcopy(dict(self.options)),
            "training": dict(self.training),
        }


class GridConfig:
    """What the configuration of every study kind is: its shared fields, grid and JSON form.

    A kind's configuration is a frozen, keyword-only dataclass deriving from this class: it
    declares these fields (in the order ``study.json`` lists them, its own among them), its
    grid's axes (:attr:`AXES`) and :meth:`training_config`; the rest is shared.

    Attributes:
        preset: the preset this configuration started from (a label for the report).
        dataset: a name of :data:`minsharp.data.datasets.DATASETS`.
        train_size: training examples (``None``, the default: all the data set offers).
        test_size: test examples (``None``: all).
        data_seed: seed of the train/test split and subsets
            (:func:`minsharp.data.datasets.load_dataset`; default 0).
        seeds: the trials; a run's seed initialises its network and orders its minibatches.
        models: the networks.
        training: the training settings shared by all models (keys of :data:`TRAINING_KEYS`
            the grid does not set).
        measures: the registered measures computed on every trained network.
        measure_options: options per measure (``spec(name).defaults`` keys).
        measure_examples: measure on the first this-many training examples (``None``: all).
        dtype: ``"float32"`` or ``"float64"``, for data, training and measures.
    """

    #: The fields the grid multiplies, each with its singular and plural in words.
    AXES: ClassVar[tuple[tuple[str, str, str], ...]] = ()

    preset: str
    dataset: str
    train_size: int | None
    test_size: int | None
    data_seed: int
    seeds: tuple[int, ...]
    models: tuple[ModelPlan, ...]
    training: Mapping[str, Any]
    measures: tuple[str, ...]
    measure_options: Mapping[str, Mapping[str, Any]]
    measure_examples: int | None
    dtype: str

    def training_config(self, model: ModelPlan, seed: int) -> TrainingConfig:
        """The training of one run of ``model`` with ``seed``."""
        raise NotImplementedError

    @property
    def runs(self) -> int:
        """Number of runs: the product of the axes' lengths."""
        return math.prod(len(getattr(self, axis)) for axis, _, _ in self.AXES)

    def grid_text(self) -> str:
        """The grid in words, e.g. ``"2 ratios × 1 seed × 1 model"``."""
        counts = ((len(getattr(self, axis)), one, many) for axis, one, many in self.AXES)
        return " × ".join(f"{n} {one if n == 1 else many}" for n, one, many in counts)

    def measure_settings(self) -> dict[str, dict[str, Any]]:
        """Each measure with the options it is computed with (a run's fingerprint holds them)."""
        return {name: dict(self.measure_options.get(name, {})) for name in self.measures}

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON types, field by field (what ``study.json`` stores)."""
        content: dict[str, Any] = {}
        for key in (f.name for f in dataclasses.fields(self)):  # type: ignore[arg-type]
            value = getattr(self, key)
            if key == "models":
                value = [model.to_dict() for model in value]
            elif key == "measure_options":
                value = {name: copy.deepcopy(dict(options)) for name, options in value.items()}
            elif isinstance(value, Mapping):
                value = dict(value)
            elif isinstance(value, (tuple, list)):
                value = list(value)
            content[key] = value
        return content


_MODEL_KEYS = ("name", "zoo", "options", "training")


def raise_problems(problems: Sequence[str]) -> None:
    """Raise :class:`StudyError` listing ``problems``, if there are any."""
    if problems:
        raise StudyError(f"invalid study configuration: {'; '.join(problems)}.")


def raise_kind_problems(config: GridConfig, problems: Sequence[str]) -> None:
    """Raise the problems of a kind's own settings, or else those :func:`common_problems` finds.

    The shared checks build each model's training (:meth:`GridConfig.training_config`), which
    needs the kind's own settings (its grid's batch sizes, the penalty…) to be valid first.
    """
    raise_problems(problems or common_problems(config))


def common_problems(config: GridConfig) -> list[str]:
    """The problems every study kind checks alike (empty when there are none).

    The data set, positive sizes (or null), an integer data seed; distinct non-negative
    integer seeds; models with distinct names, zoo entries and known options (:func:`
    model_problems`); registered measures, distinct, with known options (:func:`
    measure_problems`); the dtype.
    """
    problems: list[str] = []
    if config.dataset not in DATASETS:
        problems.append(f"dataset must be one of {', '.join(DATASETS)}; got {config.dataset!r}")
    for key in ("train_size", "test_size", "measure_examples"):
        value = getattr(config, key)
        if value is not None and not (_is_int(value) and value >= 1):
            problems.append(f"{key} must be a positive integer or null; got {value!r}")
    if not _is_int(config.data_seed):
        problems.append(f"data_seed must be an integer; got {config.data_seed!r}")
    if not config.seeds:
        problems.append("seeds is empty; give at least one seed")
    if not all(_is_int(seed) and seed >= 0 for seed in config.seeds):
        problems.append(f"seeds must be non-negative integers; got {list(config.seeds)}")
    elif len(set(config.seeds)) != len(config.seeds):
        problems.append(f"seeds must be distinct; got {list(config.seeds)}")
    problems += model_problems(config)
    problems += measure_problems(config)
    if config.dtype not in DTYPES:
        problems.append(f"dtype must be one of {', '.join(DTYPES)}; got {config.dtype!r}")
    return problems


def grid_setting_holders(config: GridConfig, keys: Sequence[str]) -> list[str]:
    """Where training settings that a kind's grid decides are set anyway (``training``, models).

    Example:
        >>> from minsharp.study.randomized_labels.config import preset
        >>> config = preset("demo")
        >>> grid_setting_holders(config, ["epochs"]), grid_setting_holders(config, ["seed"])
        (['training'], [])
    """
    return ["training"] * any(key in config.training for key in keys) + [
        f"model {model.name!r}"
        for model in config.models
        if any(key in model.training for key in keys)
    ]


def model_problems(config: GridConfig) -> list[str]:
    """Problems with the models and their training settings (see :func:`common_problems`)."""
    problems: list[str] = []
    if not config.models:
        problems.append("models is empty; give at least one model")
    names = [model.name for model in config.models]
    if len(set(names)) != len(names):
        problems.append(f"model names must be distinct; got {names}")
    unknown_training = sorted(set(config.training) - set(TRAINING_KEYS))
    if unknown_training:
        problems.append(
            f"training has no setting {', '.join(map(repr, unknown_training))}; the settings "
            f"are {', '.join(TRAINING_KEYS)}"
        )
    for model in config.models:
        if not isinstance(model.name, str) or not _NAME.fullmatch(model.name):
            problems.append(
                f"model name {model.name!r} must be letters, digits, '_', '.' or '-' "
                "(it names the run directories)"
            )
        if model.zoo not in ZOO:
            problems.append(
                f"model {model.name!r}: zoo must be one of {', '.join(ZOO)}; got {model.zoo!r}"
            )
        else:
            unknown = sorted(set(model.options) - set(ZOO[model.zoo].options))
            if unknown:
                accepted = ", ".join(f"{k}={v!r}" for k, v in ZOO[model.zoo].options.items())
                problems.append(
                    f"model {model.name!r} ({model.zoo}) has no option "
                    f"{', '.join(map(repr, unknown))}; its options are {accepted}"
                )
        unknown = sorted(set(model.training) - set(TRAINING_KEYS))
        if unknown:
            problems.append(
                f"model {model.name!r}: training has no setting {', '.join(map(repr, unknown))}; "
                f"the settings are {', '.join(TRAINING_KEYS)}"
            )
        elif not unknown_training:
            try:
                config.training_config(model, 0)
            except MinsharpError as error:
                problems.append(f"model {model.name!r}: {error}".rstrip("."))
    return problems


def measure_problems(config: GridConfig) -> list[str]:
    """Problems with the measures and their options (see :func:`common_problems`)."""
    problems: list[str] = []
    if not config.measures:
        problems.append("measures is empty; give at least one measure")
    if len(set(config.measures)) != len(config.measures):
        problems.append(f"measures must be distinct; got {list(config.measures)}")
    for name in config.measures:
        try:
            spec(name)
        except MinsharpError as error:
            problems.append(str(error).rstrip("."))
    for name, options in config.measure_options.items():
        if name not in config.measures:
            problems.append(
                f"measure_options names {name!r}, which is not among the measures "
                f"({', '.join(config.measures)})"
            )
            continue
        try:
            defaults = spec(name).defaults
        except MinsharpError:
            continue  # already reported
        unknown = sorted(set(options) - set(defaults))
        if "progress" in options:
            unknown.append("progress")
        if unknown:
            accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items() if k != "progress")
            problems.append(
                f"measure {name!r} has no study option {', '.join(map(repr, unknown))}; its "
                f"options are {accepted} (progress bars follow --progress)"
            )
    return problems


def ratio_label(ratio: float) -> str:
    """A ratio as it appears in run ids: at most four decimals, no trailing zeros.

    Example:
        >>> ratio_label(0.25), ratio_label(1.0), ratio_label(0.30000000000000004)
        ('0.25', '1', '0.3')
    """
    text = f"{ratio:.4f}".rstrip("0").rstrip(".")
    return text or "0"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------- the presets


# --------------------------------------------------------------------------- config files


#: Config keys holding a list of numbers (read as floats).
FLOAT_LISTS: tuple[str, ...] = ("ratios", "weights")

ConfigT = TypeVar("ConfigT", bound=GridConfig)


class Presets(Generic[ConfigT]):
    """The presets of one study kind by name; calling it with a name builds that preset.

    Example:
        >>> from minsharp.study.randomized_labels.config import preset
        >>> preset.names, preset("demo").dataset
        (('demo', 'cpu', 'cpu-lenet', 'paper'), 'digits')
    """

    def __init__(self, **builders: Callable[[], ConfigT]) -> None:
        self.builders = builders

    @property
    def names(self) -> tuple[str, ...]:
        """The presets' names, in the order the command line lists them."""
        return tuple(self.builders)

    def __call__(self, name: str) -> ConfigT:
        """The preset ``name``.

        Raises:
            StudyError: an unknown name.
        """
        if name not in self.builders:
            raise StudyError(f"unknown preset {name!r}; the presets are {', '.join(self.names)}.")
        return self.builders[name]()

    def stored(self, content: Mapping[str, Any]) -> ConfigT:
        """The configuration of this kind stored in a ``study.json`` (:func:`stored_config`)."""
        return stored_config(content, base=self(self.names[0]))


def config_from_mapping(
    content: Mapping[str, Any],
    *,
    base: ConfigT,
    presets: Callable[[str], ConfigT] | None = None,
) -> ConfigT:
    """``base`` with the settings of a config mapping (a config file's content) applied.

    Works for the configuration dataclass of any study kind: the keys are its fields. Top-level
    keys replace ``base``'s values, except ``training`` and ``measure_options``, which are
    merged into ``base``'s (key by key, measure by measure). ``models`` is a list of
    ``{"name", "zoo", "options", "training"}`` (``zoo`` defaults to ``name``); lists become
    tuples (:data:`FLOAT_LISTS` of floats). A ``"preset"`` key names the preset to start from
    instead of ``base``, looked up by ``presets`` (without them, a ``"preset"`` key is refused).

    Raises:
        StudyError: unknown keys, values of the wrong type, or an invalid result.
    """
    if not isinstance(content, Mapping):
        raise StudyError(f"a study config must be a JSON object; got {type(content).__name__}.")
    keys = [f.name for f in dataclasses.fields(base)]  # type: ignore[arg-type]
    unknown = sorted(set(content) - set(keys))
    if unknown:
        raise StudyError(
            f"unknown study config keys {', '.join(map(repr, unknown))}; the keys are "
            f"{', '.join(keys)}."
        )
    if "preset" in content:
        if presets is None:
            raise StudyError("a 'preset' key needs the presets of the study kind to look it up.")
        base = presets(str(content["preset"]))
    values: dict[str, Any] = {}
    for key, value in content.items():
        if key == "preset":
            continue
        current = getattr(base, key)
        if key == "training":
            values[key] = {**current, **_mapping(value, key)}
        elif key == "measure_options":
            merged = {name: dict(options) for name, options in current.items()}
            for name, options in _mapping(value, key).items():
                merged[name] = {**merged.get(name, {}), **_mapping(options, f"{key}.{name}")}
            values[key] = merged
        elif key == "models":
            values[key] = tuple(_model_plan(entry) for entry in _sequence(value, key))
        elif key in FLOAT_LISTS:
            values[key] = tuple(_number(number, key) for number in _sequence(value, key))
        elif isinstance(current, tuple):
            values[key] = tuple(_sequence(value, key))
        elif key == "dataset":
            values[key] = _dataset(value)
        else:
            values[key] = value
    return dataclasses.replace(base, **values)  # type: ignore[type-var]


def read_config_file(
    path: str | Path, *, base: ConfigT, presets: Callable[[str], ConfigT] | None = None
) -> ConfigT:
    """The study config in the JSON file ``path``, applied to ``base`` (see above).

    Raises:
        StudyError: the file is missing or not JSON, or its settings are invalid.
    """
    path = Path(path).expanduser()
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"config file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as error:
        raise StudyError(f"config file {path} cannot be read: {error}.") from None
    except json.JSONDecodeError as error:
        raise StudyError(f"config file {path} is not valid JSON: {error}.") from None
    try:
        return config_from_mapping(content, base=base, presets=presets)
    except StudyError as error:
        raise StudyError(f"config file {path}: {error}") from None


def stored_config(content: Mapping[str, Any], *, base: ConfigT) -> ConfigT:
    """The configuration of a stored ``to_dict()`` (all keys present).

    ``base`` is any configuration of the same kind (e.g. its ``demo`` preset); the stored
    values replace all of its own, ``training`` and ``measure_options`` included.

    Raises:
        StudyError: a key is missing or a value is invalid.
    """
    if not isinstance(content, Mapping):
        raise StudyError("the stored study config is not a JSON object.")
    keys = [f.name for f in dataclasses.fields(base)]
    missing = [key for key in keys if key not in content]
    if missing:
        raise StudyError(f"the stored study config lacks {', '.join(missing)}.")
    # Start from empty training settings and options, so that the stored ones are taken
    # exactly as they are rather than merged into the base's.
    empty = dataclasses.replace(base, training={}, measure_options={})
    config = config_from_mapping(
        {key: value for key, value in content.items() if key != "preset"}, base=empty
    )
    return dataclasses.replace(config, preset=str(content["preset"]))


def _model_plan(entry: Any) -> ModelPlan:
    if isinstance(entry, str):
        return ModelPlan(entry, entry)
    entry = _mapping(entry, "models[]")
    unknown = sorted(set(entry) - set(_MODEL_KEYS))
    if unknown or "name" not in entry:
        raise StudyError(
            f"a model entry must be a zoo name or an object with keys {', '.join(_MODEL_KEYS)} "
            f"(name required); got {dict(entry)!r}."
        )
    return ModelPlan(
        name=entry["name"],
        zoo=entry.get("zoo", entry["name"]),
        options=dict(_mapping(entry.get("options", {}), "options")),
        training=dict(_mapping(entry.get("training", {}), "training")),
    )


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise StudyError(f"{key} must be a JSON object; got {value!r}.")
    return value


def _sequence(value: Any, key: str) -> Sequence[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise StudyError(f"{key} must be a JSON list; got {value!r}.")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise StudyError(f"{key} must hold numbers; got {value!r}.")
    return float(value)


def _dataset(value: Any) -> str:
    try:
        return canonical_name(str(value))
    except MinsharpError as error:
        raise StudyError(str(error)) from None
