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
Exits 0 on success, 1 with the error on stderr.
"""
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
        value = f.read()
    session.createObject(data_template(app, label) + [
        (PyKCS11.CKA_TOKEN, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_PRIVATE, PyKCS11.CK_TRUE),
        (PyKCS11.CKA_VALUE, value)])


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
