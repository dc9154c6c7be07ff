"""Built-in personas served by ``GET /personas`` and accepted as ``persona_id``.

The ids are fixed CUID-like strings so tests and docs can name them; see ``persona_ids()``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Persona:
    """One persona as listed by the Mavera API (the system prompt is never exposed)."""

    id: str
    name: str
    category: str
    description: str
    is_custom: bool = False
    is_expert: bool = False
    created_at: int = 1706140800

    def to_json(self) -> dict[str, Any]:
        """The documented list-item shape (mavera-api.md section 4)."""
        return {
            "id": self.id,
            "object": "persona",
            "name": self.name,
            "category": self.category,
            "description": self.description,
            "is_custom": self.is_custom,
            "is_expert": self.is_expert,
            "created_at": self.created_at,
        }


PERSONAS: tuple[Persona, ...] = (
    Persona(
        "clx1abc2d0001abcdef123456",
        "Gen Z Consumer",
        "Generational",
        "Digital native aged 18-26; values authenticity, short-form video and brands with a cause.",
    ),
    Persona(
        "clx1abc2d0002abcdef123456",
        "Millennial Parent",
        "Generational",
        "Busy parent in their thirties balancing budget, convenience and family wellbeing.",
    ),
    Persona(
        "clx1abc2d0003abcdef123456",
        "Baby Boomer Retiree",
        "Generational",
        "Retired professional who prizes reliability, clear pricing and personal customer service.",
    ),
    Persona(
        "clx1abc2d0004abcdef123456",
        "B2B SaaS Buyer",
        "Professional",
        "Procurement-minded IT manager weighing security reviews, integrations and total cost.",
    ),
    Persona(
        "clx1abc2d0005abcdef123456",
        "Small Business Owner",
        "Professional",
        "Owner of a ten-person company; time-poor, cash-conscious and sceptical of long contracts.",
    ),
    Persona(
        "clx1abc2d0006abcdef123456",
        "Eco-Conscious Shopper",
        "Lifestyle",
        "Chooses sustainable products, reads labels and will pay more for verified green claims.",
    ),
    Persona(
        "clx1abc2d0007abcdef123456",
        "Fitness Enthusiast",
        "Lifestyle",
        "Trains five days a week, tracks everything and follows creators for gear and nutrition.",
    ),
    Persona(
        "clx1abc2d0008abcdef123456",
        "Healthcare Administrator",
        "IndustrySpecific",
        "Runs operations at a regional hospital; focused on compliance, staffing and patient flow.",
    ),
    Persona(
        "clx1abc2d0009abcdef123456",
        "Retail Banking Customer",
        "IndustrySpecific",
        "Everyday bank customer comparing fees, mobile apps and how quickly support answers.",
    ),
    Persona(
        "clx1abc2d0010abcdef123456",
        "Behavioral Economist",
        "Expert",
        "Academic expert on decision biases, pricing psychology and choice architecture.",
        is_expert=True,
    ),
    Persona(
        "clx1abc2d0011abcdef123456",
        "Brand Strategist",
        "Expert",
        "Senior strategist who evaluates positioning, messaging hierarchy and brand consistency.",
        is_expert=True,
    ),
    Persona(
        "clx9cus7m0001acmecorp0001",
        "Acme Enterprise IT Lead",
        "Professional",
        "Custom persona: IT lead at Acme Corp evaluating vendor tooling for a 2,000-seat rollout.",
        is_custom=True,
        created_at=1735689600,
    ),
)

_BY_ID = {persona.id: persona for persona in PERSONAS}


def persona_ids() -> list[str]:
    """Ids of all built-in personas, in list order."""
    return [persona.id for persona in PERSONAS]


def find_persona(persona_id: str) -> Persona | None:
    """The persona with this id, or None."""
    return _BY_ID.get(persona_id)


def filter_personas(
    personas: Iterable[Persona],
    *,
    category: str | None = None,
    search: str | None = None,
    is_custom: bool | None = None,
    limit: int = 50,
) -> list[Persona]:
    """Apply the ``GET /personas`` query filters (category and search are case-insensitive)."""
    needle = search.lower() if search else None
    selected = []
    for persona in personas:
        if category is not None and persona.category.lower() != category.lower():
            continue
        if is_custom is not None and persona.is_custom != is_custom:
            continue
        haystack = f"{persona.name}\n{persona.description}".lower()
        if needle is not None and needle not in haystack:
            continue
        selected.append(persona)
    return selected[:limit]
