"""The base's chat format, read off its own chat template (Jinja) by rendering probe conversations.

omniloom writes a conversation as role headers, contents and turn ends. A grafted model keeps the
base's own: this module renders the base's template on conversations whose contents are unique
marker words and cuts the rendered text at the markers, which leaves the pieces the template puts
around every turn::

    render([system S, user U, assistant A])  = bos + H_sys + S + END + H_user + U + END + H_asst + A + END
    render([user U], add_generation_prompt)  = bos + DEFAULT_SYSTEM + H_user + U + END + H_asst

(``bos`` only when the template writes its ``bos_token``; ``DEFAULT_SYSTEM`` the system turn some
templates add when a conversation has none, SmolLM2's among them.) Each piece is tokenized with the
base tokenizer. A template that cannot be cut this way (one that folds the system prompt into the
first user turn, or changes a turn's text beyond wrapping it) raises :class:`ValueError`; graft
with ``--chat-format omniloom`` then, and the model learns omniloom's role tokens in training.
"""

from __future__ import annotations

from typing import Any

__all__ = ["chat_format_from_template", "render_template"]

_S, _U, _A, _U2 = "omniloomSysq", "omniloomUsrq", "omniloomAsstq", "omniloomUsr2q"
_BOS, _EOS = "\x01omniloomBOS\x01", "\x01omniloomEOS\x01"


def render_template(template: str, messages: list[dict], add_generation_prompt: bool,
                    bos_token: str = "", eos_token: str = "") -> str:
    """Render a Hugging Face chat template as transformers does (sandboxed Jinja, trim_blocks)."""
    try:
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ValueError("reading a chat template needs jinja2: pip install -e \".[graft]\"") from None

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                bos_token=bos_token, eos_token=eos_token)
    except TemplateError as e:
        raise ValueError(f"the base's chat template failed to render a probe conversation: {e}") from e


def _cut(text: str, *marks: str) -> list[str]:
    """``text`` split at each marker in order (each must occur once, in that order)."""
    out, pos = [], 0
    for m in marks:
        if text.count(m) != 1:
            raise ValueError(f"the chat template does not write each turn's content once, as given ({m!r})")
        i = text.find(m, pos)
        if i < 0:
            raise ValueError("the chat template reorders the turns")
        out.append(text[pos:i])
        pos = i + len(m)
    out.append(text[pos:])
    return out


def chat_format_from_template(template: str, tokenizer: Any, bos_token: str | None, eos_token: str | None
                              ) -> tuple[dict[str, list[int]], dict[str, str]]:
    """(chat format in text ids, the same as strings) of a base's chat template (see the module doc)."""
    if not template:
        raise ValueError("the base has no chat template")
    conv = [{"role": "system", "content": _S}, {"role": "user", "content": _U},
            {"role": "assistant", "content": _A}]
    full = render_template(template, conv, False, _BOS, _EOS)
    head, between_su, between_ua, tail = _cut(full, _S, _U, _A)
    # the turn end is what follows the last assistant turn; the template may add its eos after it
    uses_bos = head.startswith(_BOS)
    head = head[len(_BOS):] if uses_bos else head
    eos = ""
    if tail.endswith(_EOS):
        eos, tail = (eos_token or ""), tail[:-len(_EOS)]
    end = tail
    if full.count(_BOS) > (1 if uses_bos else 0) or _EOS in tail:
        raise ValueError("the chat template writes bos/eos tokens inside turns, which omniloom cannot follow")
    if not end:
        raise ValueError("the chat template writes nothing after a turn, so a turn's end cannot be told")
    if not between_su.startswith(end) or not between_ua.startswith(end):
        raise ValueError("the chat template ends system, user and assistant turns differently")
    strings = {"bos": (bos_token or "") if uses_bos else "", "system": head, "user": between_su[len(end):],
               "assistant": between_ua[len(end):], "end": end, "eos": eos}
    # the generation prompt must be the assistant header, and a second user turn must look like the first
    gen = render_template(template, conv[:2], True, _BOS, _EOS)
    if not gen.endswith(_U + end + strings["assistant"]):
        raise ValueError("the chat template's generation prompt is not the assistant turn's header")
    multi = render_template(template, conv + [{"role": "user", "content": _U2}], False, _BOS, _EOS)
    if _A + end + strings["user"] + _U2 + end not in multi:
        raise ValueError("the chat template writes later user turns differently from the first")
    # a conversation without a system turn: what the template writes before the user header
    alone = render_template(template, conv[1:2], False, _BOS, _EOS)
    pre = alone[:alone.index(_U)]
    pre = pre[len(_BOS):] if pre.startswith(_BOS) else pre
    if not pre.endswith(strings["user"]):
        raise ValueError("the chat template writes a first user turn without its header")
    strings["default_system"] = pre[:-len(strings["user"])]
    for key in ("system", "user", "assistant"):
        if not strings[key]:
            raise ValueError(f"the chat template writes no header for {key} turns")

    def ids(text: str) -> list[int]:
        return list(tokenizer.encode(text, add_special_tokens=False).ids) if text else []

    return {k: ids(v) for k, v in strings.items()}, strings
