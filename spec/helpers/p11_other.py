#!/usr/bin/python3
"""Another process on the token, through PyKCS11 (Debian python3-pykcs11):
what a rival program, an older version or a fault does to a set's data
objects and keys, for the specs that check the engine survives it.

    p11_other.py MODULE TOKEN_LABEL PIN COMMAND ARGS...

Commands (APP: CKA_APPLICATION, LABEL: CKA_LABEL):
    create APP LABEL FILE       a private token CKO_DATA object holding FILE's
                                bytes (any size: pkcs11-tool stops at 5000)
    list APP LABEL              one line per object: its size, then its value
                                (when under 4096 bytes and UTF-8)
    destroy APP LABEL           destroys every such object; prints how many
    replace APP LABEL FILE      destroys them, then creates one with FILE
    sign-allowed LABEL KID      prints CKA_SIGN of the private key (KID as
                                text, the CKA_ID's bytes)
    sign LABEL KID              tries C_SignInit + C_Sign (ECDSA) on the
                                private key; prints OK or the CKR name
    corrupt KIND APP MARKER_APP LABEL
                                does to the set's key states (APP: their
                                CKA_APPLICATION, MARKER_APP: the marker's)
                                what issue 19 found another process or a
                                fault doing; KIND is one of CORRUPTIONS
                                below. Prints the kind and the version of
                                the value it started from.
Exits 0 on success, 1 with the error on stderr.
"""
import json
import re
import sys

import PyKCS11


def session_for(module, label, pin):
    lib = PyKCS11.PyKCS11Lib()
    lib.load(module)
    for slot in lib.getSlotList(tokenPresent=True):
        if lib.getTokenInfo(slot).label.strip() == label:
            session = lib.openSession(slot, PyKCS11.CKF_SERIAL_SESSION | PyKCS11.CKF_RW_SESSION)
            session.login(pin)
            return lib, session
    raise SystemExit("no token labelled %r" % label)


def data_template(app, label):
    return [(PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA),
            (PyKCS11.CKA_APPLICATION, app),
            (PyKCS11.CKA_LABEL, label)]


def find_data(session, app, label):
    return session.findObjects(data_template(app, label))


def create(session, app, label, path):
    with open(path, "rb") as f:
        create_value(session, app, label, f.read())


def destroy(session, app, label):
    found = find_data(session, app, label)
    for handle in found:
        session.destroyObject(handle)
    return len(found)


def private_key(session, label, kid):
    found = session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY),
                                 (PyKCS11.CKA_LABEL, label),
                                 (PyKCS11.CKA_ID, kid.encode())])
    if len(found) != 1:
        raise SystemExit("%d private keys %r in %r" % (len(found), kid, label))
    return found[0]


def newest_value(session, app, label):
    """The set's newest readable state value (JSON) and its text; objects
    an earlier corruption left (not JSON, no numeric version) are passed."""
    best = None
    for handle in find_data(session, app, label):
        raw = bytes(session.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0]).decode("utf-8", "replace")
        try:
            value = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(value, dict) or not isinstance(value.get("version"), int) \
                or not isinstance(value.get("records"), dict):
            continue
        if best is None or value["version"] > best[0]["version"]:
            best = (value, raw)
    if best is None:
        raise SystemExit("no readable state object for %r" % label)
    return best


def replaced(text):
    """A corruption that replaces the state objects by one holding text."""
    def apply(session, app, marker_app, label, value, raw):
        destroy(session, app, label)
        create_value(session, app, label, text(value, raw).encode())
    return apply


def dumps(value):
    return json.dumps(value, separators=(",", ":"))


def with_(change):
    def text(value, raw):
        value = json.loads(raw)
        change(value)
        return dumps(value)
    return text


def oversized_beside(session, app, marker_app, label, value, raw):
    create_value(session, app, label, b"z" * 70000)


def rival_all_current(session, app, marker_app, label, value, raw):
    forged = {"version": value["version"] + 5, "writer": "rival",
              "records": {kid: {"state": "current", "times": {"current": 1}} for kid in value["records"]}}
    create_value(session, app, label, dumps(forged).encode())


def delete_all(session, app, marker_app, label, value, raw):
    for handle in session.findObjects([(PyKCS11.CKA_CLASS, PyKCS11.CKO_DATA), (PyKCS11.CKA_LABEL, label)]):
        session.destroyObject(handle)


def set_(name, v):
    def change(value):
        value[name] = v(value)
    return change


def each_record(change):
    def apply(value):
        for record in value["records"].values():
            change(record)
    return apply


CORRUPTIONS = {
    "version-string": replaced(with_(set_("version", lambda v: str(v["version"])))),
    "records-not-object": replaced(with_(set_("records", lambda v: "kids"))),
    "truncated": replaced(lambda value, raw: raw[:len(raw) // 2]),
    "oversized-beside": oversized_beside,
    "version-inf": replaced(lambda value, raw: re.sub(r'"version":\s*\d+', '"version":1e999', raw)),
    "record-without-times": replaced(with_(each_record(lambda r: r.pop("times", None)))),
    "records-list": replaced(with_(set_("records", lambda v: [v["records"]]))),
    "rival-all-current": rival_all_current,
    "delete-all": delete_all,
}


def create_value(session, app, label, value):
    session.createObject(data_template(app, label) + [
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_VALUE, value)])


def main(argv):
    module, token_label, pin, command, *args = argv[1:]
    _, session = session_for(module, token_label, pin)
    try:
        if command == "create":
            create(session, *args)
        elif command == "list":
            for handle in find_data(session, *args):
                value = bytes(session.getAttributeValue(handle, [PyKCS11.CKA_VALUE])[0])
                shown = ""
                if len(value) < 4096:
                    shown = value.decode("utf-8", "replace")
                print(len(value), shown)
        elif command == "destroy":
            print(destroy(session, *args))
        elif command == "replace":
            app, label, path = args
            destroy(session, app, label)
            create(session, app, label, path)
        elif command == "sign-allowed":
            key = private_key(session, *args)
            print(bool(session.getAttributeValue(key, [PyKCS11.CKA_SIGN])[0]))
        elif command == "sign":
            key = private_key(session, *args)
            try:
                session.sign(key, b"\x00" * 32, PyKCS11.Mechanism(PyKCS11.CKM_ECDSA, None))
                print("OK")
            except PyKCS11.PyKCS11Error as e:
                print(PyKCS11.CKR.get(e.value, str(e.value)))
        elif command == "corrupt":
            kind, app, marker_app, label = args
            value, raw = newest_value(session, app, label)
            CORRUPTIONS[kind](session, app, marker_app, label, value, raw)
            print(kind, value["version"])
        else:
            raise SystemExit("unknown command %r" % command)
    finally:
        session.logout()
        session.closeSession()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except PyKCS11.PyKCS11Error as e:
        print(PyKCS11.CKR.get(e.value, str(e)), file=sys.stderr)
        sys.exit(1)
