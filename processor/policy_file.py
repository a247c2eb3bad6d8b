"""Reading the policy file (YAML) into a validated `PolicyConfig`.

Kept outside `processor.policy` so the core stays standard-library only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from processor.policy.config import PolicyConfig, PolicyConfigError


def load_policy(path: str | Path | None) -> PolicyConfig:
    """The policy in `path`, or the defaults when `path` is None.

    Raises PolicyConfigError (naming the file, and the setting where there is one)
    for a file that cannot be read, is not UTF-8, is not YAML, sets a key twice, or
    has an unknown key or a bad value.
    """
    if path is None:
        return PolicyConfig()
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise PolicyConfigError(f"{path}: cannot read the policy file: {error.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyConfigError(
            f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
        ) from None
    try:
        settings = parse_yaml(text)
    except PolicyConfigError as error:
        raise PolicyConfigError(f"{path}: {error}") from None
    try:
        return PolicyConfig.from_mapping(settings)
    except PolicyConfigError as error:
        raise PolicyConfigError(f"{path}: {error}") from None


def parse_yaml(text: str) -> Any:
    """YAML text -> Python data, as `yaml.safe_load` reads it, except that a mapping
    that sets a key twice is an error naming the key (YAML says keys are unique;
    PyYAML would silently keep the last, so a policy could say two things at once).

    Raises PolicyConfigError for anything that is not such YAML.
    """
    import yaml  # only when a file is given: `simulate` without one needs no YAML

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *defaults`: overriding merged keys is allowed
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        line = key_node.start_mark.line + 1
                        where = f"again on line {line}"
                        raise PolicyConfigError(f"{str(key)[:60]}: set twice ({where})")
                    seen.add(key)
                except TypeError:
                    pass  # unhashable: SafeLoader refuses it with its own message
            return dict(super().construct_mapping(node, deep=deep))

    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader: plain data only
    except yaml.YAMLError as error:
        raise PolicyConfigError(f"not valid YAML: {error}") from None
    except RecursionError:
        raise PolicyConfigError("not valid YAML: nested too deeply") from None
    except ValueError as error:  # a value PyYAML could not build (a date like 2026-13-45)
        if isinstance(error, PolicyConfigError):
            raise
        reason = str(error)
        if "integer string conversion" in reason:  # Python's limit of 4300 digits
            reason = "a number with too many digits"
        raise PolicyConfigError(f"not valid YAML: {reason}") from None
