"""Config overrides that fail loudly: unknown keys get a "did you mean", wrong types a clear error.

yacs: :func:`merge_yacs_overrides` / :func:`merge_yacs_file` (``merge_from_list`` / ``_file``
reject ``SOLVER.BASE_LR 1`` and unknown keys without a hint). LazyConfig:
:func:`apply_lazy_overrides` (``apply_overrides`` silently creates a misspelt key; here it is an
error unless written ``+key=value``).
Every problem of one call is reported at once. A value must have the type of the value it
replaces, except that an int may replace a float, a list a tuple (and back), "true"/"false" a
bool, and None may replace or be replaced by anything.
"""
from __future__ import annotations

import ast
import copy
import difflib
from typing import Any, Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

__all__ = [
    "ConfigKeyError",
    "ConfigTypeError",
    "suggest_keys",
    "merge_yacs_overrides",
    "merge_yacs_file",
    "apply_lazy_overrides",
]


class ConfigKeyError(KeyError):
    """An unknown config key; the message suggests the nearest valid keys."""

    def __str__(self) -> str:  # KeyError's own __str__ would print the message's repr
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(TypeError, ValueError):
    """A config value of the wrong type; the message names the key, the expected type and the
    value given. Also a ValueError, which is what yacs raises for a type mismatch."""


def suggest_keys(key: str, valid_keys: Sequence[str], n: int = 3) -> List[str]:
    """The valid keys nearest to ``key``, best first (possibly none), by difflib's ratio of the
    full paths or of the last components (so ``MODEL.BASE_LR`` finds ``SOLVER.BASE_LR``)."""
    key_l = key.lower()
    leaf_l = key_l.rsplit(".", 1)[-1]
    scored = []
    for cand in valid_keys:
        cand_l = cand.lower()
        full = difflib.SequenceMatcher(None, key_l, cand_l).ratio()
        leaf = difflib.SequenceMatcher(None, leaf_l, cand_l.rsplit(".", 1)[-1]).ratio()
        # A near-identical last component is strong evidence; slightly below an exact path.
        score = max(full, 0.95 * leaf if leaf >= 0.8 else 0.0)
        if score >= 0.6:
            scored.append((score, cand))
    scored.sort(key=lambda sc: (-sc[0], sc[1]))
    return [cand for _, cand in scored[:n]]


def _unknown_key_message(key: str, valid_keys: Sequence[str], origin: str, hint: str = "") -> str:
    suggestions = suggest_keys(key, valid_keys)
    advice = f"Did you mean: {', '.join(suggestions)}?" if suggestions else "No similar key exists."
    return f"Unknown config key '{key}' ({origin}). {advice}{hint}"


def _group_message(key: str, members: List[str], origin: str) -> str:
    shown = ", ".join(members[:5]) + (", ..." if len(members) > 5 else "")
    return f"Config key '{key}' is a group of keys ({shown}); set one of them instead ({origin})."


def _coerce(value: Any, original: Any, key: str, origin: str) -> Any:
    """``value`` as the type of ``original`` (module docstring), else ConfigTypeError."""
    if original is None or value is None or type(value) is type(original):
        return value
    if isinstance(original, bool):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(original, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    elif isinstance(original, (list, tuple)) and isinstance(value, (list, tuple)):
        return type(original)(value)
    hint = " To pass it as text, quote it." if isinstance(original, str) else ""
    raise ConfigTypeError(
        f"Config key '{key}' expects type {type(original).__name__} (its value is {original!r}), "
        f"but got {type(value).__name__} {value!r} ({origin}).{hint}"
    )


def _key_paths(node: Any, prefix: str = "", *, lists: bool = False) -> Iterator[str]:
    """Every full key path of a config, groups included; with ``lists``, list items by index."""
    if isinstance(node, dict):
        items = node.items()
    elif lists and isinstance(node, list):
        items = enumerate(node)
    else:
        return
    for k, v in items:
        path = f"{prefix}{k}"
        yield path
        yield from _key_paths(v, path + ".", lists=lists)


def _checked(overrides: Iterable[Sequence[Any]], check: Callable[..., Any]) -> List[Any]:
    """``check(*override)`` of every override, or all the :class:`ConfigKeyError` and
    :class:`ConfigTypeError` they raise together (a ConfigKeyError if any key is unknown)."""
    results: List[Any] = []
    key_errors: List[str] = []
    type_errors: List[str] = []
    for override in overrides:
        try:
            results.append(check(*override))
        except ConfigKeyError as e:
            key_errors.append(str(e))
        except ConfigTypeError as e:
            type_errors.append(str(e))
    if key_errors:
        raise ConfigKeyError("\n".join(key_errors + type_errors))
    if type_errors:
        raise ConfigTypeError("\n".join(type_errors))
    return results


# yacs


def _find_yacs_leaf(cfg, full_key: str) -> Optional[Tuple[Any, str]]:
    """(node holding the key's last component, that component), or None when unknown."""
    *groups, leaf = full_key.split(".")
    node = cfg
    for part in groups:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return None
    new_allowed = hasattr(node, "is_new_allowed") and node.is_new_allowed()
    return (node, leaf) if leaf in node or new_allowed else None


def merge_yacs_overrides(cfg, opts: Optional[List[str]]) -> None:
    """Apply ``[KEY, VALUE, ...]`` to a yacs ``cfg`` in place, values parsed as yacs does
    (deprecated keys ignored, renamed keys raise). Raises ``ValueError`` for an odd length,
    :class:`ConfigKeyError` for unknown keys, :class:`ConfigTypeError` for wrong types."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(
            f"Config overrides must be KEY VALUE pairs, but {len(opts)} items were given; "
            f"'{opts[-1]}' has no value."
        )
    if cfg.is_frozen():
        raise AttributeError("The config is frozen; apply overrides before cfg.freeze().")

    def check(full_key: str, raw: str) -> Optional[Tuple[Any, str, Any]]:
        origin = f"override '{full_key} {raw}'"
        if cfg.key_is_deprecated(full_key):
            return None
        if cfg.key_is_renamed(full_key):
            cfg.raise_key_rename_error(full_key)
        found = _find_yacs_leaf(cfg, full_key)
        if found is None:
            raise ConfigKeyError(_unknown_key_message(full_key, list(_key_paths(cfg)), origin))
        node, leaf = found
        value = type(cfg)._decode_cfg_value(raw)
        if leaf in node and isinstance(node[leaf], dict):
            raise ConfigTypeError(_group_message(full_key, list(node[leaf]), origin))
        return node, leaf, _coerce(value, node.get(leaf), full_key, origin)

    for node, leaf, value in filter(None, _checked(zip(opts[0::2], opts[1::2]), check)):
        node[leaf] = value


def merge_yacs_file(cfg, cfg_filename: str) -> None:
    """``cfg.merge_from_file``, raising :class:`ConfigKeyError` (with suggestions) or
    :class:`ConfigTypeError` naming the file; yacs stops at a file's first bad key."""
    valid_keys = list(_key_paths(cfg))
    try:
        cfg.merge_from_file(cfg_filename)
    except KeyError as e:
        message = str(e.args[0]) if e.args else ""
        prefix = "Non-existent config key: "
        if not message.startswith(prefix):
            raise
        key = message[len(prefix):].strip()
        raise ConfigKeyError(
            _unknown_key_message(key, valid_keys, f"in config file {cfg_filename}")
        ) from e
    except ValueError as e:
        if "Type mismatch" not in str(e):
            raise
        raise ConfigTypeError(f"In config file {cfg_filename}: {e}") from e


# LazyConfig (omegaconf)

_ABSENT = object()


def _lazy_lookup(container: Any, key: str) -> Any:
    """The value at a dotted path of a plain-container config, or _ABSENT."""
    node = container
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def _parse_lazy_overrides(opts: List[str]) -> List[Tuple[str, Any, bool, str]]:
    """(key, value, explicit add, text) per override: hydra's grammar, or without hydra
    ``key=value`` with a Python literal value."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
    except ImportError:
        OverridesParser = None
    parsed = []
    if OverridesParser is not None:
        for o in OverridesParser.create().parse_overrides(opts):
            if o.is_delete():
                raise ValueError(f"Deleting config keys is not supported ('{o.input_line}').")
            explicit_add = o.is_add() or o.is_force_add()
            parsed.append((o.key_or_group, o.value(), explicit_add, o.input_line))
        return parsed
    for text in opts:
        if "=" not in text:
            raise ValueError(f"Config override '{text}' is not of the form key=value.")
        key, raw = text.split("=", 1)
        explicit_add = key.startswith("+")
        key = key.lstrip("+")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        parsed.append((key, value, explicit_add, text))
    return parsed


def apply_lazy_overrides(cfg, opts: Optional[List[str]]):
    """``LazyConfig.apply_overrides`` in place (returns ``cfg``), but an unknown key raises
    :class:`ConfigKeyError` unless written ``+key=value``, and a wrong type
    :class:`ConfigTypeError` (``${...}`` and ``???`` values take any). All or nothing: when one
    override is rejected, ``cfg`` is unchanged."""
    from omegaconf import OmegaConf

    container = OmegaConf.to_container(cfg, resolve=False)

    def check(key: str, value: Any, explicit_add: bool, text: str) -> Tuple[str, Any]:
        origin = f"override '{text}'"
        current = _lazy_lookup(container, key)
        # The deepest existing group on the way to the key: detectron2 creates missing ones.
        ancestors = (key.rsplit(".", n)[0] for n in range(1, key.count(".") + 1))
        found = (_lazy_lookup(container, a) for a in ancestors)
        parent = next((p for p in found if p is not _ABSENT), container)
        if current is _ABSENT and not explicit_add:
            valid_keys = list(_key_paths(container, lists=True))
            hint = f" To add a new key, write '+{text}'."
            raise ConfigKeyError(_unknown_key_message(key, valid_keys, origin, hint))
        if current is _ABSENT and not isinstance(parent, dict):
            # detectron2's check: adding a.b.c needs a.b, if it exists, to be a config.
            raise ConfigTypeError(f"Cannot add '{key}': its parent is not a config ({origin}).")
        if isinstance(current, str) and (current == "???" or "${" in current):
            current = None  # missing or interpolated: the type is not known here
        if isinstance(current, dict) and not isinstance(value, dict):
            raise ConfigTypeError(_group_message(key, list(current), origin))
        if current is not _ABSENT and not isinstance(current, dict):
            value = _coerce(value, current, key, origin)
        return key, value

    updates = _checked(_parse_lazy_overrides(list(opts or [])), check)
    # On a copy first, so that what only omegaconf refuses raises before ``cfg`` changes.
    for target in (copy.deepcopy(cfg), cfg):
        for key, value in updates:
            OmegaConf.update(target, key, value, merge=True)
    return cfg
