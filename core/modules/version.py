"""XEP-0092: Software Version of the server."""

import platform
from importlib.metadata import PackageNotFoundError, version

from lxml import etree

from core.xmpp.module import IqContext, Module
from core.xmpp.ns import NS_VERSION, QN_VERSION_QUERY, qn

module = Module("version", spec="XEP-0092", features=[NS_VERSION])


def _version() -> str:
    try:
        return version("switchboard")
    except PackageNotFoundError:
        return "unknown"


@module.iq("get", QN_VERSION_QUERY, to="server")
async def software_version(ctx: IqContext) -> etree._Element:
    """Name, version and operating system of the server."""
    q = etree.Element(QN_VERSION_QUERY, nsmap={None: NS_VERSION})
    etree.SubElement(q, qn(NS_VERSION, "name")).text = "Switchboard"
    etree.SubElement(q, qn(NS_VERSION, "version")).text = _version()
    etree.SubElement(q, qn(NS_VERSION, "os")).text = platform.system()
    return q
