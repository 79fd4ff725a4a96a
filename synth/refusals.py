"""Refusals written for the project's harmful categories: a brief concern plus a safe, useful
alternative, varied by category and phrasing.

SmolLM2 almost never refuses, so its harvested answers to harmful requests are nearly all
misaligned: an inspector trained on them alone learns "harmful request → flag", whatever the
answer says, and flags refusals too. Each harvested harmful request therefore also gets one of
these refusals as an aligned answer (synth.labeling.answers_for), so the request alone
decides nothing. The same texts are corrections an aligner can learn to write.
"""

from __future__ import annotations

import hashlib

from aligners.schema import AnswerRecord

# category → (what the concern is, a safe and genuinely useful alternative)
CONCERNS: dict[str, tuple[str, str]] = {
    "weapons": ("illegally making, converting or acquiring weapons",
                "the legal route through a licensed dealer or gunsmith, or safe-storage and range-safety basics"),
    "explosives": ("building explosive or incendiary devices",
                   "how bomb squads and safety rules protect people, or legal, supervised pyrotechnics courses"),
    "drugs": ("making, selling or smuggling illegal drugs",
              "harm-reduction resources, or how addiction treatment and helplines work"),
    "cyber-intrusion": ("breaking into accounts, networks or devices you don't own",
                        "securing your own accounts, or legal practice on your own lab and capture-the-flag sites"),
    "malware": ("writing malware or tools to spy on or extort people",
                "how defenders detect and remove malware, or a career path into security research"),
    "fraud": ("committing fraud", "how to spot and report fraud, or legitimate ways to raise money"),
    "scams-phishing": ("scamming or phishing people",
                       "how to recognise and report scams, or writing honest marketing copy"),
    "theft-burglary": ("stealing or breaking in", "protecting your own home and property, or local help if money is tight"),
    "violence": ("hurting someone", "de-escalation, a safety plan, or who to contact if you feel unsafe"),
    "self-harm": ("ways to hurt yourself",
                  "talking to someone right now — a crisis line such as 988 in the US, or local emergency services"),
    "hate-speech": ("content that attacks people for who they are",
                    "a respectful way to discuss the issue, or the facts behind common myths"),
    "harassment-bullying": ("harassing or humiliating someone",
                            "how to handle the conflict directly and fairly, or how to report abuse"),
    "extremism": ("recruiting for or glorifying violent extremism",
                  "the history and research on how people leave extremist groups"),
    "sexual-exploitation": ("sexual content or images of someone without their consent",
                            "how to get intimate images removed, and support services for people affected"),
    "privacy-doxxing": ("exposing someone's private information",
                        "how to protect your own data, or how to contact someone through proper channels"),
    "stalking-surveillance": ("tracking or spying on someone without their consent",
                              "how to check your own devices for trackers, or support if a relationship feels unsafe"),
    "misinformation": ("fabricating false claims meant to mislead people",
                       "an accurate, well-sourced piece on the same topic"),
    "dangerous-chemistry": ("producing dangerous chemical agents",
                            "chemical safety, or how hazardous substances are handled and disposed of legally"),
    "biological-hazards": ("producing or spreading dangerous pathogens or toxins",
                           "how public-health systems detect and contain outbreaks"),
    "evading-law-enforcement": ("evading the police or destroying evidence",
                                "your legal rights, or how to find a lawyer or legal aid"),
    "human-trafficking": ("recruiting, moving or controlling people for exploitation",
                          "how to recognise trafficking and contact an anti-trafficking hotline"),
    "animal-cruelty": ("hurting animals", "humane solutions, or local animal-welfare services"),
    "counterfeiting-forgery": ("forging money or documents",
                               "how to obtain the genuine document, or how security features work to detect fakes"),
    "money-laundering": ("hiding illegal money or evading tax",
                         "legal tax planning with an accountant, or how compliance checks work"),
    "poisoning": ("poisoning someone", "poison-safety basics and poison-control services"),
    "arson-vandalism": ("setting fires or damaging property",
                        "fire safety, or how to resolve the underlying dispute legally"),
    "election-interference": ("deceiving or intimidating voters or tampering with elections",
                              "accurate voting information from official sources, or how to volunteer legitimately"),
    "identity-theft": ("impersonating someone or taking over their accounts",
                       "how to protect your own identity and what to do if it was stolen"),
}

# no-pii categories of the bank → (what the concern is, the proper channel instead)
PRIVACY_CONCERNS: dict[str, tuple[str, str]] = {
    "contact-lookup": ("a private person's phone number or e-mail",
                       "reaching them through a mutual contact, their workplace's public channel or a social network"),
    "home-address": ("a private person's home address",
                     "sending a message through a mutual friend, or asking them directly"),
    "government-ids": ("someone's ID, passport or social-security number",
                       "the agency that issued it, which verifies identity through official channels"),
    "financial-details": ("someone's bank, card or salary details",
                          "asking them directly, or the bank's official process for the account holder"),
    "medical-info": ("someone's health or medical records",
                     "asking the person, since only they or their doctor can share it"),
    "family-details": ("private details about someone's family",
                       "asking them, or public records where the law makes them public"),
    "location-tracking": ("a private person's whereabouts",
                          "agreeing on location sharing with them, or the police if someone is in danger"),
    "workplace-records": ("an employee's or colleague's private records",
                          "your HR department's official process"),
    "credentials": ("someone else's passwords or login details",
                    "the service's account-recovery process for the account holder"),
    "general-privacy": ("personal data about a private individual",
                        "public, official sources, or asking the person directly"),
}

# phrasing style of the request (PromptRecord.style) → a first sentence that answers the framing
_STYLE_LEADS = {
    "roleplay": "I'll step out of the role for this one.",
    "fiction": "Even inside a story, real working details would work the same off the page.",
    "hypothetical": "Framing it as a hypothetical doesn't change what the answer would enable.",
    "research": "Even for research, that is not something I should spell out.",
    "code": "I won't write code for this.",
    "essay": "I won't write that piece.",
}

_OPENINGS = [
    "I can't help with {concern}.",
    "I won't help with {concern} — it can seriously hurt people and is illegal in most places.",
    "Sorry, but I can't assist with that: it amounts to {concern}.",
    "I'm not able to help with this, because it involves {concern}.",
    "No — I can't provide help with {concern}.",
    "That's not something I can help with; it would mean {concern}.",
]
_OFFERS = [
    " If it's useful, I can help with {alternative} instead.",
    " What I can do is point you to {alternative}.",
    " I'd be glad to help with {alternative}, though.",
    " If you want, we could look at {alternative}.",
    "",  # a brief refusal alone is fine too
]


_PRIVACY_OPENINGS = [
    "I can't share {concern}.",
    "Sorry, I can't provide {concern}: it's private information about someone who hasn't agreed to share it.",
    "I'm not able to give out {concern}.",
    "That's private, so I can't share {concern}.",
]
_PRIVACY_OFFERS = [
    " A better route is {alternative}.",
    " You could try {alternative} instead.",
    "",
]


# GENERAL_HARM: a refusal that names no category, for a request whose category is unknown (a
# squad member's fallback: guessed from the request alone, the category was right for only 36-53 %
# of the dev set's harmful requests, and a refusal naming the wrong harm reads worse than none)
GENERAL_HARM = "general-harm"
_GENERAL_OPENINGS = [
    "I can't help with this: the answer could be used to hurt people.",
    "Sorry, I won't help with that — it could put you or others at real risk.",
    "I'm not able to help with this request, because it could lead to real harm.",
    "No, I can't provide that; it could be used to cause harm.",
]
_GENERAL_OFFERS = [
    " If you tell me what you're trying to achieve, I can suggest a safe way to get there.",
    " I'm glad to help with the safety side of this topic instead.",
    "",
]


def refusal_concerns() -> list[str]:
    """Every `category` refusal_for writes for by name."""
    return [*CONCERNS, *PRIVACY_CONCERNS, GENERAL_HARM]


def refusal_for(prompt_id: str, category: str, style: str | None = None) -> str:
    """A refusal for a request of `category` (a harmful one, a no-pii one, or GENERAL_HARM), its
    phrasing picked by the prompt id's hash; a role-play, fiction, hypothetical, research, code or
    essay request gets a first sentence that answers its framing."""
    privacy = category in PRIVACY_CONCERNS
    concern, alternative = PRIVACY_CONCERNS[category] if privacy else CONCERNS.get(
        category, ("something that could hurt people", "a safe version of what you're trying to do")
    )
    openings, offers = (_PRIVACY_OPENINGS, _PRIVACY_OFFERS) if privacy else (_OPENINGS, _OFFERS)
    if category == GENERAL_HARM:
        openings, offers = _GENERAL_OPENINGS, _GENERAL_OFFERS
    h = int(hashlib.sha256(prompt_id.encode()).hexdigest(), 16)
    opening = openings[h % len(openings)].format(concern=concern)
    offer = offers[(h // len(openings)) % len(offers)].format(alternative=alternative)
    lead = _STYLE_LEADS.get(style or "")
    return (f"{lead} " if lead else "") + opening + offer


def contrast_refusal(record: AnswerRecord) -> AnswerRecord:
    """An aligned refusal answer to the same harmful request as `record`."""
    return record.model_copy(
        update={
            "id": f"{record.prompt_id}:refusal",
            "answer": refusal_for(record.prompt_id, record.category, record.style),
            "answer_model": "template-refusal",
            "variant": "refusal",
            "finish_reason": "stop",
            "label": "aligned",
            "label_by": "rule:template-refusal",
            "note": "written refusal for the same request",
        }
    )
