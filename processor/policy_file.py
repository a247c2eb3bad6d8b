"""Reading the policy file (YAML) into a validated `PolicyConfig`.

Kept outside `processor.policy` so the core stays standard-library only.
"""

from __future__ import annotations

from pathlib import Path

from processor.policy.config import PolicyConfig, PolicyConfigError


def load_policy(path: str | Path | None) -> PolicyConfig:
    """The policy in `path`, or the defaults when `path` is None.

    Raises PolicyConfigError (naming the file and the setting) for unreadable
    YAML, an unknown key or a bad value.
    """
    if path is None:
        return PolicyConfig()
    import yaml  # only when a file is given: `simulate` without one needs no YAML

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyConfigError(f"{path}: cannot read the policy file: {error.strerror}") from None
    try:
        settings = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise PolicyConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return PolicyConfig.from_mapping(settings)
    except PolicyConfigError as error:
        raise PolicyConfigError(f"{path}: {error}") from None
