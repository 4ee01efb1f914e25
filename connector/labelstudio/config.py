"""Checks of a Label Studio label config against the connector's settings (pure, no I/O).

The connector needs an ``<Image>`` object tag showing the task field ``image_field`` and a
``<Choices name=choices_name>`` control pointing at it; every class must be reachable
from a choice (directly or through ``labels.map``). Errors name the fix.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from html import escape

from connector.contracts.errors import ConfigError


@dataclass(frozen=True)
class LabelConfigInfo:
    """What the connector uses of a label config."""

    image_tag: str  #: ``name`` of the Image tag (the ``to_name`` of results)
    choices_name: str
    #: Choice values as they appear in annotation results (``alias`` if set, else ``value``).
    choices: list[str]
    warnings: list[str] = field(default_factory=list)


def _fmt(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def parse_label_config(xml: str, *, image_field: str, choices_name: str) -> LabelConfigInfo:
    """Find the Image tag for ``$image_field`` and the Choices control ``choices_name``."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ConfigError(
            f"the project's label config is not valid XML ({exc}); fix it in Label Studio"
        ) from None
    images = [el for el in root.iter() if el.tag == "Image"]
    wanted = f"${image_field}"
    image = next((el for el in images if el.get("value") == wanted), None)
    if image is None or not image.get("name"):
        found = [f'<Image name="{el.get("name")}" value="{el.get("value")}">' for el in images]
        raise ConfigError(
            f'the project\'s label config has no <Image value="{wanted}"> tag (found: '
            f"{_fmt(found)}); add one, or set label_studio.image_field to the task field "
            "your Image tag shows"
        )
    image_name = str(image.get("name"))
    all_choices = [el for el in root.iter() if el.tag == "Choices"]
    control = next((el for el in all_choices if el.get("name") == choices_name), None)
    if control is None:
        names = [str(el.get("name")) for el in all_choices]
        raise ConfigError(
            f'the project\'s label config has no <Choices name="{choices_name}"> control '
            f"(Choices found: {_fmt(names)}); add it, or set label_studio.choices_name"
        )
    targets = [t.strip() for t in (control.get("toName") or "").split(",") if t.strip()]
    if image_name not in targets:
        raise ConfigError(
            f'<Choices name="{choices_name}"> points to {_fmt(targets)}, not to the Image tag '
            f'"{image_name}"; set toName="{image_name}" in the label config'
        )
    choices = [
        str(el.get("alias") or el.get("value"))
        for el in control.iter("Choice")
        if el.get("alias") or el.get("value")
    ]
    if not choices:
        raise ConfigError(
            f'<Choices name="{choices_name}"> has no <Choice> values; add one per class'
        )
    warnings: list[str] = []
    if control.get("choice", "single") != "single":
        warnings.append(
            f'<Choices name="{choices_name}"> allows several choices; annotations with more '
            'than one are quarantined (set choice="single")'
        )
    return LabelConfigInfo(image_name, choices_name, choices, warnings)


def check_classes(
    choices: Sequence[str], classes: Sequence[str], label_map: Mapping[str, str]
) -> tuple[dict[str, str], list[str]]:
    """Resolve ``choice -> class`` and check every class is reachable from some choice.

    ``label_map`` maps Label Studio choice values to class names; a choice not in it keeps
    its own name. With empty ``classes``, every (mapped) choice is a class.

    Returns the mapping of usable choices and warnings (choices that lead to no class).
    """
    unknown_keys = sorted(set(label_map) - set(choices))
    if unknown_keys:
        raise ConfigError(
            f"labels.map maps {', '.join(map(repr, unknown_keys))}, which "
            f"{'is' if len(unknown_keys) == 1 else 'are'} not a Choice in the project's label "
            f"config (choices: {_fmt(choices)}); fix the key in [labels] map or add the Choice"
        )
    mapped = {c: label_map.get(c, c) for c in choices}
    if not classes:
        return mapped, []
    reachable = set(mapped.values())
    for cls in classes:
        if cls not in reachable:
            raise ConfigError(
                f"label {cls!r} is not a Choice in the project's label config "
                f"(choices: {_fmt(choices)}); add it or map it in [labels]"
            )
    usable = {c: v for c, v in mapped.items() if v in set(classes)}
    warnings = [
        f"choice {c!r} maps to no class ({v!r} is not in labels.classes); annotations "
        "choosing it are quarantined as invalid"
        for c, v in mapped.items()
        if c not in usable
    ]
    return usable, warnings


def image_classification_config(
    classes: Sequence[str], *, image_field: str = "image", choices_name: str = "label"
) -> str:
    """A label config for single-choice image classification over ``classes``: the one a
    project gets when the connector creates it (``label_studio.project_id`` unset)."""
    choices = "\n".join(f'    <Choice value="{escape(c, quote=True)}"/>' for c in classes)
    return (
        "<View>\n"
        f'  <Image name="{image_field}" value="${image_field}"/>\n'
        f'  <Choices name="{choices_name}" toName="{image_field}" choice="single" '
        'showInline="true">\n'
        f"{choices}\n"
        "  </Choices>\n"
        "</View>\n"
    )
