"""The few facts we read from an MRD XML flexible data header (``ismrmrdHeader``).

Read leniently: elements are matched by local name (any namespace), a missing element is None,
and text that is not XML (python-ismrmrd-server's client sends ``"Dummy XML header"`` for files
without one) gives all None. No schema validation: the header only labels the data here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

__all__ = ["MRDHeaderFacts", "header_facts", "minimal_header_xml"]


@dataclass(frozen=True)
class MRDHeaderFacts:
    """Attributes: field_strength_T, vendor, model (``acquisitionSystemInformation``),
    patient_id (``subjectInformation/patientID``), protocol (``measurementInformation/
    protocolName``); None where absent."""

    field_strength_T: float | None = None
    vendor: str | None = None
    model: str | None = None
    patient_id: str | None = None
    protocol: str | None = None

    @property
    def scanner(self) -> str | None:
        """``"vendor model"`` if either is known."""
        text = " ".join(p for p in (self.vendor, self.model) if p)
        return text or None


def _find(root: ET.Element, *path: str) -> str | None:
    node: ET.Element | None = root
    for name in path:
        node = next((c for c in node if c.tag.rsplit("}", 1)[-1] == name), None)  # type: ignore[union-attr]
        if node is None:
            return None
    text = (node.text or "").strip() if node is not None else ""
    return text or None


def header_facts(xml: str) -> MRDHeaderFacts:
    """The facts of an MRD XML header (all None if it is not XML).

    Example:
        >>> header_facts(minimal_header_xml(field_strength_T=3.0)).field_strength_T
        3.0
    """
    try:
        root = ET.fromstring(xml.split("\0", 1)[0])
    except ET.ParseError:
        return MRDHeaderFacts()
    field = _find(root, "acquisitionSystemInformation", "systemFieldStrength_T")
    try:
        field_strength = float(field) if field is not None else None
    except ValueError:
        field_strength = None
    return MRDHeaderFacts(
        field_strength_T=field_strength,
        vendor=_find(root, "acquisitionSystemInformation", "systemVendor"),
        model=_find(root, "acquisitionSystemInformation", "systemModel"),
        patient_id=_find(root, "subjectInformation", "patientID"),
        protocol=_find(root, "measurementInformation", "protocolName"),
    )


def minimal_header_xml(
    field_strength_T: float = 1.5, protocol: str = "inlinecmr", patient_id: str | None = None
) -> str:
    """A small valid MRD header (for clients that have no scanner header to send)."""
    subject = f"<subjectInformation><patientID>{patient_id}</patientID></subjectInformation>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        + (subject if patient_id else "")
        + f"<measurementInformation><protocolName>{protocol}</protocolName>"
        "</measurementInformation>"
        "<acquisitionSystemInformation><systemVendor>inline-cmr</systemVendor>"
        f"<systemFieldStrength_T>{field_strength_T}</systemFieldStrength_T>"
        "</acquisitionSystemInformation>"
        "<encoding><encodedSpace><matrixSize><x>64</x><y>64</y><z>1</z></matrixSize>"
        "<fieldOfView_mm><x>300</x><y>300</y><z>8</z></fieldOfView_mm></encodedSpace>"
        "<reconSpace><matrixSize><x>64</x><y>64</y><z>1</z></matrixSize>"
        "<fieldOfView_mm><x>300</x><y>300</y><z>8</z></fieldOfView_mm></reconSpace>"
        "<trajectory>cartesian</trajectory></encoding>"
        "</ismrmrdHeader>"
    )
