#!/usr/bin/env python3
"""Generate vimService.wsdl / vim.wsdl / vim-messagetypes.xsd for a vcsim test.

vcsim does not serve the vSphere WSDL that suds/oslo.vmware needs.  The data
types (vim-types.xsd, core-types.xsd, query-types.xsd, reflect-types.xsd) ship
with oslo.vmware (oslo_vmware/wsdl/<ver>/) for its PBM client; only the
per-method request/response declarations are missing.  We derive those from
govmomi's generated Go bindings (vim25/types/types.go, Debian package
golang-github-vmware-govmomi-dev), which were generated from the same WSDL.

usage: gen_vim_wsdl.py TYPES_GO OSLO_WSDL_DIR OUT_DIR

Run by tests/functional/services/vmware.py; its output is never committed.
"""

# ruff: noqa: E501, UP031 - one-line XML templates, kept as the tool was written and checked
import os
import re
import shutil
import sys
from xml.sax.saxutils import quoteattr

types_go, oslo_dir, out = sys.argv[1:4]
src = open(types_go).read()
os.makedirs(out, exist_ok=True)

xsd_files = ["core-types.xsd", "query-types.xsd", "vim-types.xsd", "reflect-types.xsd"]
known = set()
for f in xsd_files:
    shutil.copy(os.path.join(oslo_dir, f), out)
    if f != "reflect-types.xsd":  # reflect is another namespace
        known |= set(
            re.findall(
                r'<(?:complexType|simpleType) name="(\w+)"', open(os.path.join(out, f)).read()
            )
        )

ifsrc = open(os.path.join(os.path.dirname(types_go), "if.go")).read()
interfaces = set(re.findall(r"^type Base(\w+) interface", src + ifsrc, re.M))
structs = dict(re.findall(r"^type (\w+) struct \{\n(.*?)^\}", src, re.M | re.S))
PRIM = {
    "string": "xsd:string",
    "bool": "xsd:boolean",
    "int32": "xsd:int",
    "int64": "xsd:long",
    "int16": "xsd:short",
    "int8": "xsd:byte",
    "byte": "xsd:byte",
    "float32": "xsd:float",
    "float64": "xsd:double",
    "time.Time": "xsd:dateTime",
    "AnyType": "xsd:anyType",
    "[]byte": "xsd:base64Binary",
    "int": "xsd:int",
}
FIELD = re.compile(r'^\s+\w+\s+(\S+)\s+`xml:"([^",]+)((?:,[^"]*)?)"')


def xsd_type(gotype):
    if gotype in PRIM:
        return PRIM[gotype]
    if gotype.startswith("Base") and gotype[4:] in interfaces:
        gotype = gotype[4:]
    return "vim25:" + gotype if gotype in known else "xsd:anyType"


def elements(body):
    res = []
    for line in body.splitlines():
        m = FIELD.match(line)
        if not m:
            continue
        gotype, name, opts = m.groups()
        mn, mx = "", ""
        if gotype.startswith("*"):
            gotype, mn = gotype[1:], ' minOccurs="0"'
        if gotype.startswith("[]") and gotype != "[]byte":
            gotype, mn, mx = gotype[2:], ' minOccurs="0"', ' maxOccurs="unbounded"'
        if "omitempty" in opts:
            mn = ' minOccurs="0"'
        res.append('<element name=%s type="%s"%s%s/>' % (quoteattr(name), xsd_type(gotype), mn, mx))
    return res


# govmomi: "type DeleteDatastoreFile_Task DeleteDatastoreFileRequestType"
# (method name -> request type), response struct is "<method>Response".
methods = sorted(re.findall(r"^type (\w+) (\w+RequestType)$", src, re.M))
msgtypes, elems, msgs, ports, binds = [], [], [], [], []
for rt in sorted({rt for _, rt in methods}):
    msgtypes.append(
        '<complexType name="%s"><sequence>%s</sequence></complexType>'
        % (rt, "".join(elements(structs[rt])))
    )
for m, rt in methods:
    elems.append('<element name="%s" type="vim25:%s"/>' % (m, rt))
    resp = elements(structs.get(m + "Response", ""))
    elems.append(
        '<element name="%sResponse"><complexType><sequence>%s</sequence></complexType></element>'
        % (m, "".join(resp))
    )
    msgs.append(
        '<message name="%sRequestMsg"><part name="parameters" element="vim25:%s"/></message>'
        % (m, m)
    )
    msgs.append(
        '<message name="%sResponseMsg"><part name="parameters" element="vim25:%sResponse"/></message>'
        % (m, m)
    )
    ports.append(
        '<operation name="%s"><input message="vim25:%sRequestMsg"/><output message="vim25:%sResponseMsg"/></operation>'
        % (m, m, m)
    )
    binds.append(
        '<operation name="%s"><soap:operation soapAction="urn:vim25/7.0"/><input><soap:body use="literal"/></input><output><soap:body use="literal"/></output></operation>'
        % m
    )

NS = (
    'xmlns="http://www.w3.org/2001/XMLSchema" xmlns:vim25="urn:vim25" '
    'xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
)
with open(os.path.join(out, "vim-messagetypes.xsd"), "w") as f:
    f.write(
        '<?xml version="1.0" encoding="UTF-8"?>\n<schema targetNamespace="urn:vim25" %s '
        'elementFormDefault="qualified">\n<include schemaLocation="vim-types.xsd"/>\n%s\n</schema>\n'
        % (NS, "\n".join(msgtypes))
    )
with open(os.path.join(out, "vim.wsdl"), "w") as f:
    f.write(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<definitions targetNamespace="urn:vim25" xmlns="http://schemas.xmlsoap.org/wsdl/" '
        'xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:vim25="urn:vim25" '
        'xmlns:xsd="http://www.w3.org/2001/XMLSchema">\n<types><schema targetNamespace="urn:vim25" %s '
        'elementFormDefault="qualified"><include schemaLocation="vim-messagetypes.xsd"/>\n%s\n</schema></types>\n'
        '%s\n<portType name="VimPortType">\n%s\n</portType>\n'
        '<binding name="VimBinding" type="vim25:VimPortType"><soap:binding style="document" '
        'transport="http://schemas.xmlsoap.org/soap/http"/>\n%s\n</binding>\n</definitions>\n'
        % (NS, "\n".join(elems), "\n".join(msgs), "\n".join(ports), "\n".join(binds))
    )
with open(os.path.join(out, "vimService.wsdl"), "w") as f:
    f.write(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<definitions targetNamespace="urn:vim25Service" xmlns="http://schemas.xmlsoap.org/wsdl/" '
        'xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/" xmlns:interface="urn:vim25">\n'
        '<import location="vim.wsdl" namespace="urn:vim25"/>\n<service name="VimService">'
        '<port binding="interface:VimBinding" name="VimPort"><soap:address '
        'location="https://localhost/sdk/vimService"/></port></service>\n</definitions>\n'
    )
print("methods:", len(methods), "known xsd types:", len(known))
