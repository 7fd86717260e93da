-- RFC 7512 PKCS#11 URIs: the RFC's own examples (section 3.3), malformed
-- input, PIN hygiene, and the mapping to the engine's hsm settings.
local pkcs11_uri = require("jwkengine.pkcs11_uri")
local refused = require("helpers.refusal").refused

local PIN = "s3cr3t-PIN-4711"

-- The RFC wraps its examples over lines "for display purposes only".
local function joined(s)
  return (s:gsub("%s+", ""))
end

local function parse_ok(uri, options)
  local parsed, err, code = pkcs11_uri.parse(uri, options)
  assert(parsed, tostring(err) .. " (" .. tostring(code) .. ") for " .. uri)
  return parsed
end

local function parse_err(uri, options)
  local parsed, err, code = pkcs11_uri.parse(uri, options)
  assert(parsed == nil, "accepted " .. uri)
  assert.are.equal("ERR_PKCS11_URI", code)
  assert.is_string(err)
  assert.matches("^invalid PKCS#11 URI: ", err)
  return err
end

-- Everything parse() returned, without the empty vendor table.
local function fields(parsed)
  local t = {}
  for k, v in pairs(parsed) do
    if k ~= "vendor" or next(v) then t[k] = v end
  end
  return t
end

describe("pkcs11_uri.parse", function()
  describe("RFC 7512 section 3.3 examples", function()
    it("an empty URI names everything", function()
      assert.are.same({}, fields(parse_ok("pkcs11:")))
    end)

    it("a public key by label", function()
      assert.are.same({ object = "my-pubkey", type = "public" },
        fields(parse_ok("pkcs11:object=my-pubkey;type=public")))
    end)

    it("a private key with a PIN file", function()
      assert.are.same({ object = "my-key", type = "private", ["pin-source"] = "file:/etc/token" },
        fields(parse_ok("pkcs11:object=my-key;type=private?pin-source=file:/etc/token")))
    end)

    it("a certificate on a token named in full, with an empty serial", function()
      local uri = joined([[
        pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;
               manufacturer=Snake%20Oil,%20Inc.;
               model=1.0;
               object=my-certificate;
               type=cert;
               id=%69%95%3E%5C%F4%BD%EC%91;
               serial=
               ?pin-source=file:/etc/token_pin]])
      assert.are.same({
        token = "The Software PKCS#11 Softtoken",
        manufacturer = "Snake Oil, Inc.",
        model = "1.0",
        object = "my-certificate",
        type = "cert",
        id = "\105\149\62\92\244\189\236\145",
        serial = "",
        ["pin-source"] = "file:/etc/token_pin",
      }, fields(parse_ok(uri)))
    end)

    it("a module by name", function()
      assert.are.same({ object = "my-sign-key", type = "private", ["module-name"] = "mypkcs11" },
        fields(parse_ok(joined([[pkcs11:object=my-sign-key;
                                 type=private
                                 ?module-name=mypkcs11]]))))
    end)

    it("a module by path", function()
      assert.are.same({ object = "my-sign-key", type = "private", ["module-path"] = "/mnt/libmypkcs11.so.1" },
        fields(parse_ok(joined([[pkcs11:object=my-sign-key;
                                 type=private
                                 ?module-path=/mnt/libmypkcs11.so.1]]))))
    end)

    it("a PIN in the URI", function()
      assert.are.same({
        token = "Software PKCS#11 softtoken",
        manufacturer = "Snake Oil, Inc.",
        ["pin-value"] = "the-pin",
      }, fields(parse_ok(joined([[pkcs11:token=Software%20PKCS%2311%20softtoken;
                                   manufacturer=Snake%20Oil,%20Inc.
                                   ?pin-value=the-pin]]))))
    end)

    it("a slot by description", function()
      assert.are.same({ ["slot-description"] = "Sun Metaslot" },
        fields(parse_ok("pkcs11:slot-description=Sun%20Metaslot")))
    end)

    it("a library by manufacturer, description and version", function()
      assert.are.same({
        ["library-manufacturer"] = "Snake Oil, Inc.",
        ["library-description"] = "Soft Token Library",
        ["library-version"] = "1.23",
      }, fields(parse_ok(joined([[pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;
                                   library-description=Soft%20Token%20Library;
                                   library-version=1.23]]))))
    end)

    it("an escaped percent sign, mixed-case escapes and a binary id", function()
      assert.are.same({
        token = "My token% created by Joe",
        ["library-version"] = "3",
        id = "\1\2\3\186\221\202\254\4\5\6",
      }, fields(parse_ok(joined([[pkcs11:token=My%20token%25%20created%20by%20Joe;
                                   library-version=3;
                                   id=%01%02%03%Ba%dd%Ca%fe%04%05%06]]))))
    end)

    it("escaped delimiters inside a value", function()
      assert.are.same({ token = "A name with a substring %;", object = "my-certificate", type = "cert" },
        fields(parse_ok(joined([[pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;
                                   object=my-certificate;
                                   type=cert]]))))
    end)

    it("UTF-8 in a label", function()
      assert.are.same({
        token = "Name with a small A with acute: \195\161",
        object = "my-certificate",
        type = "cert",
      }, fields(parse_ok(joined([[pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;
                                   object=my-certificate;
                                   type=cert]]))))
    end)

    local vendor_example = joined([[pkcs11:token=my-token;
                                     object=my-certificate;
                                     type=cert;
                                     vendor-aaa=value-a
                                     ?pin-source=file:/etc/token_pin
                                     &vendor-bbb=value-b]])

    it("vendor attributes: the RFC's own names need require_x_prefix = false", function()
      local err = parse_err(vendor_example)
      assert.matches("unknown path attribute vendor-aaa (vendor attributes start with 'x-')", err, 1, true)
      assert.are.same({
        token = "my-token",
        object = "my-certificate",
        type = "cert",
        ["pin-source"] = "file:/etc/token_pin",
        vendor = { ["vendor-aaa"] = "value-a", ["vendor-bbb"] = "value-b" },
      }, fields(parse_ok(vendor_example, { require_x_prefix = false })))
    end)

    it("vendor attributes with the x- prefix are kept in vendor by default", function()
      local parsed = parse_ok("pkcs11:token=my-token;x-aaa=value-a?pin-source=file:/etc/token_pin&x-bbb=value%20b")
      assert.are.same({ ["x-aaa"] = "value-a", ["x-bbb"] = "value b" }, parsed.vendor)
    end)
  end)

  describe("accepts", function()
    it("the characters the RFC leaves unencoded in the path and in the query", function()
      local parsed = parse_ok("pkcs11:token=:[]@!$'()*+,=&-._~?module-name=:[]@!$'()*+,=?|-._~")
      assert.are.equal(":[]@!$'()*+,=&-._~", parsed.token)
      assert.are.equal(":[]@!$'()*+,=?|-._~", parsed["module-name"])
    end)

    it("unnecessary escapes and bytes that must be escaped", function()
      assert.are.equal(":[]@!$'()*+,&=-` <>{", parse_ok("pkcs11:token=%3a%5b%5d%40%21%24%27%28%29%2a%2b%2c%26%3d-%60%20%3c%3e%7b").token)
      assert.are.equal("\0\1\2Hello", parse_ok("pkcs11:token=%00%01%02Hello").token)
      assert.are.equal("\0\255\254", parse_ok("pkcs11:id=%00%FF%FE").id)
    end)

    it("an empty query, empty path values, and the scheme in any case", function()
      assert.are.same({}, fields(parse_ok("pkcs11:?")))
      assert.are.same({ token = "a" }, fields(parse_ok("pkcs11:token=a?")))
      assert.are.same({ token = "", object = "" }, fields(parse_ok("pkcs11:token=;object=")))
      assert.are.same({ token = "a" }, fields(parse_ok("PKCS11:token=a")))
    end)

    it("attribute names and type values in any case, reported in lower case", function()
      assert.are.same({ token = "T", type = "private", ["slot-id"] = 3 },
        fields(parse_ok("pkcs11:TOKEN=T;Type=Private;Slot-Id=3")))
    end)

    it("slot-id as a decimal number", function()
      assert.are.equal(0, parse_ok("pkcs11:slot-id=0")["slot-id"])
      assert.are.equal(7, parse_ok("pkcs11:slot-id=007")["slot-id"])
      assert.are.equal(1240585266, parse_ok("pkcs11:slot-id=1240585266")["slot-id"])
      assert.are.equal(9007199254740991, parse_ok("pkcs11:slot-id=9007199254740991")["slot-id"])
    end)

    it("every object type", function()
      for _, t in ipairs({ "public", "private", "cert", "secret-key", "data" }) do
        assert.are.equal(t, parse_ok("pkcs11:type=" .. t).type)
      end
    end)
  end)

  describe("rejects", function()
    local cases = {
      -- scheme and overall shape
      { "", "must start with 'pkcs11:'" },
      { "pkcs11", "must start with 'pkcs11:'" },
      { "pkcs11 :token=a", "must start with 'pkcs11:'" },
      { "http://example.com/", "must start with 'pkcs11:'" },
      { " pkcs11:token=a", "must start with 'pkcs11:'" },
      { "pkcs11:token=a b", "whitespace and control characters" },
      { "pkcs11:token=a\n", "whitespace and control characters" },
      { "pkcs11:token=a\tb", "whitespace and control characters" },
      { "pkcs11:token=a\0", "whitespace and control characters" },
      { "pkcs11:token=a#b", "no fragment" },
      -- separators and names
      { "pkcs11:token", "the 1st path attribute has no '='" },
      { "pkcs11:token=a;object", "the 2nd path attribute has no '='" },
      { "pkcs11:=a", "has no name" },
      { "pkcs11:token=a;", "the 2nd path attribute is empty (stray ';')" },
      { "pkcs11:;token=a", "the 1st path attribute is empty" },
      { "pkcs11:token=a;;object=b", "the 2nd path attribute is empty" },
      { "pkcs11:token=a?&", "the 1st query attribute is empty (stray '&')" },
      { "pkcs11:?module-name=m&", "the 2nd query attribute is empty" },
      { "pkcs11:?module-name", "the 1st query attribute has no '='" },
      { "pkcs11:to.ken=a", "name has a character other than letters, digits" },
      { "pkcs11:tok%65n=a", "name has a character other than letters, digits" },
      -- attributes
      { "pkcs11:tokne=hydra", "unknown path attribute tokne (vendor attributes start with 'x-')" },
      { "pkcs11:?pin=1", "unknown query attribute pin" },
      { "pkcs11:token=a;token=b", "attribute token appears more than once" },
      { "pkcs11:token=a;TOKEN=b", "attribute token appears more than once" },
      { "pkcs11:x-a=1;x-a=2", "attribute x-a appears more than once" },
      { "pkcs11:x-a=1?x-a=2", "attribute x-a appears more than once" },
      { "pkcs11:?module-path=/a&module-path=/b", "attribute module-path appears more than once" },
      { "pkcs11:module-path=/usr/lib/x.so", "module-path is a query attribute: put it after '?'" },
      { "pkcs11:?token=a", "token is a path attribute: put it before '?'" },
      { "pkcs11:?slot-id=1", "slot-id is a path attribute" },
      -- characters and escapes
      { "pkcs11:token=a/b", "token contains '/' (0x2F), which must be percent-encoded as %2F" },
      { "pkcs11:token=a?b=c|d", "unknown query attribute b" },
      { "pkcs11:token=a|b", "token contains '|' (0x7C)" },
      { "pkcs11:token=\"a\"", "token contains '\"' (0x22)" },
      { "pkcs11:token=a\\b", "token contains '\\' (0x5C)" },
      { "pkcs11:token=\195\161", "token contains (0xC3), which must be percent-encoded as %C3" },
      { "pkcs11:?module-name=a;b", "module-name contains ';' (0x3B)" },
      { "pkcs11:?module-name=a<b", "module-name contains '<' (0x3C)" },
      { "pkcs11:token=%", "token has a malformed percent-encoding" },
      { "pkcs11:token=%4", "token has a malformed percent-encoding" },
      { "pkcs11:token=a%4", "token has a malformed percent-encoding" },
      { "pkcs11:token=%zz", "token has a malformed percent-encoding" },
      { "pkcs11:token=%G0", "token has a malformed percent-encoding" },
      { "pkcs11:token=%%41", "token has a malformed percent-encoding" },
      { "pkcs11:id=%0x12", "id has a malformed percent-encoding" },
      { "pkcs11:x-v=%2", "x-v has a malformed percent-encoding" },
      -- UTF-8 in text attributes
      { "pkcs11:token=%C3", "token is not valid UTF-8" },
      { "pkcs11:token=%FF", "token is not valid UTF-8" },
      { "pkcs11:object=%C0%AF", "object is not valid UTF-8" },
      { "pkcs11:model=%ED%A0%80", "model is not valid UTF-8" },
      { "pkcs11:serial=%F4%90%80%80", "serial is not valid UTF-8" },
      { "pkcs11:manufacturer=%E2%82", "manufacturer is not valid UTF-8" },
      -- slot-id
      { "pkcs11:slot-id=", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=abc", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=-1", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=+1", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=1.5", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=1e3", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=0x10", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=%31", "slot-id must be a decimal integer" },
      { "pkcs11:slot-id=9007199254740992", "slot-id is too large" },
      { "pkcs11:slot-id=99999999999999999999999", "slot-id is too large" },
      -- type, library-version
      { "pkcs11:type=", "type must be one of public, private, cert, secret-key, data" },
      { "pkcs11:type=key", "type must be one of" },
      { "pkcs11:type=%70ublic", "type must be one of" },
      { "pkcs11:library-version=", "library-version must be digits" },
      { "pkcs11:library-version=1.", "library-version must be digits" },
      { "pkcs11:library-version=1.2.3", "library-version must be digits" },
      { "pkcs11:library-version=v1", "library-version must be digits" },
      -- query values
      { "pkcs11:?module-path=lib/x.so", "module-path must be an absolute path" },
      { "pkcs11:?module-path=", "module-path must be an absolute path" },
      { "pkcs11:?module-name=", "module-name must be a module name" },
      { "pkcs11:?module-name=/usr/lib/x.so", "module-name must be a module name (no '/')" },
      { "pkcs11:?pin-source=", "pin-source is empty" },
      { "pkcs11:?pin-value=", "pin-value is empty" },
      { "pkcs11:?pin-value=1234&pin-source=file:/p", "pin-value and pin-source cannot be used together" },
      { "pkcs11:?pin-source=file:/p&pin-value=1234", "pin-value and pin-source cannot be used together" },
    }
    for _, case in ipairs(cases) do
      it(string.format("%q", case[1]), function()
        local err = parse_err(case[1])
        assert.matches(case[2], err, 1, true)
      end)
    end

    it("non-string input and non-table options (programming errors raise)", function()
      assert.has_error(function() pkcs11_uri.parse(nil) end)
      assert.has_error(function() pkcs11_uri.parse(42) end)
      assert.has_error(function() pkcs11_uri.parse({}) end)
      assert.has_error(function() pkcs11_uri.parse("pkcs11:", "strict") end)
    end)
  end)

  describe("never puts the PIN in a message", function()
    local bad = {
      "pkcs11:?pin-value=" .. PIN .. "&pin-source=file:/p",
      "pkcs11:?pin-value=" .. PIN .. "&pin-value=" .. PIN,
      "pkcs11:pin-value=" .. PIN,
      "pkcs11:token=a;pin-value=" .. PIN .. "?x=1",
      "pkcs11:?pin-value=" .. PIN .. "%G",
      "pkcs11:?pin-value=" .. PIN .. "%",
      "pkcs11:?pin-value=" .. PIN .. "\"",
      "pkcs11:?pin-value=" .. PIN .. "<",
      "pkcs11:?pin-value=" .. PIN .. ";",
      "pkcs11:?pin-value=" .. PIN .. " ",
      "pkcs11:?pin-value=" .. PIN .. "#",
      "pkcs11:?pin-value=" .. PIN .. "&token=x",
      "pkcs11:?pin-value=" .. PIN .. "&" .. PIN,
      "pkcs11:?pin-value=" .. PIN .. "&pin=" .. PIN,
      "pkcs11:?pin=" .. PIN,
      "pkcs11:?" .. PIN,
      "pkcs11:" .. PIN,
      "pkcs11:token=" .. PIN .. "%",
      "pkcs11:?pin-value=%FF" .. PIN .. "%",
    }
    for _, uri in ipairs(bad) do
      it(string.format("%q", pkcs11_uri.redact(uri)), function()
        local err = parse_err(uri)
        assert.is_nil(err:find(PIN, 1, true), err)
        assert.is_nil(err:find("s3cr3t", 1, true), err)
      end)
    end

    it("nor a character of it", function()
      local err = parse_err("pkcs11:?pin-value=ab\"cd")
      assert.are.equal("invalid PKCS#11 URI: pin-value contains a character that must be percent-encoded", err)
    end)

    it("redact() hides every pin-value, also in malformed URIs", function()
      assert.are.equal("pkcs11:token=t?pin-value=***", pkcs11_uri.redact("pkcs11:token=t?pin-value=" .. PIN))
      assert.are.equal("pkcs11:token=t?module-name=m&pin-value=***&x-a=b",
        pkcs11_uri.redact("pkcs11:token=t?module-name=m&pin-value=" .. PIN .. "&x-a=b"))
      assert.are.equal("pkcs11:pin-value=***;token=t", pkcs11_uri.redact("pkcs11:pin-value=" .. PIN .. ";token=t"))
      assert.are.equal("pkcs11:?PIN-VALUE=***", pkcs11_uri.redact("pkcs11:?PIN-VALUE=" .. PIN))
      assert.are.equal("pkcs11:token=t", pkcs11_uri.redact("pkcs11:token=t"))
    end)

    it("without_pin() leaves the query's pin-value out (a PIN kept elsewhere)", function()
      assert.are.equal("pkcs11:token=t", pkcs11_uri.without_pin("pkcs11:token=t?pin-value=" .. PIN))
      assert.are.equal("pkcs11:token=t?module-name=m&x-a=b",
        pkcs11_uri.without_pin("pkcs11:token=t?module-name=m&PIN-Value=" .. PIN .. "&x-a=b"))
      assert.are.equal("pkcs11:token=t?pin-source=/p", pkcs11_uri.without_pin("pkcs11:token=t?pin-source=/p"))
      assert.are.equal("pkcs11:token=t", pkcs11_uri.without_pin("pkcs11:token=t"))
    end)
  end)

  it("is_uri tells a URI from a label", function()
    assert.is_true(pkcs11_uri.is_uri("pkcs11:token=a"))
    assert.is_true(pkcs11_uri.is_uri("PKCS11:"))
    assert.is_false(pkcs11_uri.is_uri("hydra"))
    assert.is_false(pkcs11_uri.is_uri("pkcs11"))
    assert.is_false(pkcs11_uri.is_uri(nil))
  end)
end)

describe("pkcs11_uri.to_hsm_config", function()
  local function config(uri)
    return pkcs11_uri.to_hsm_config(parse_ok(uri))
  end

  it("maps token, slot-id, module-path and pin-value to the hsm keys", function()
    assert.are.same({
      token_label = "hydra",
      slot = 1240585266,
      library = "/usr/lib/softhsm/libsofthsm2.so",
      pin = "1234",
    }, config("pkcs11:token=hydra;slot-id=1240585266?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=1234"))
  end)

  it("maps serial, manufacturer and model to token_serial, token_manufacturer, token_model", function()
    assert.are.same({
      token_label = "hydra",
      token_serial = "4b5ac0f3c9d8e7a1",
      token_manufacturer = "SoftHSM project",
      token_model = "SoftHSM v2",
    }, config("pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=4b5ac0f3c9d8e7a1;token=hydra"))
  end)

  it("an empty URI maps to nothing", function()
    assert.are.same({}, config("pkcs11:"))
  end)

  it("maps pin-source to pin_file: file: URIs and plain paths", function()
    local cases = {
      { "file:/etc/token_pin", "/etc/token_pin" },
      { "file:///etc/token_pin", "/etc/token_pin" },
      { "file://localhost/etc/token_pin", "/etc/token_pin" },
      { "FILE:/etc/token_pin", "/etc/token_pin" },
      { "file:/etc/my%20pin", "/etc/my pin" },
      { "/run/secrets/hsm-pin", "/run/secrets/hsm-pin" },
      { "secrets/pin.txt", "secrets/pin.txt" },
    }
    for _, case in ipairs(cases) do
      local hsm = assert(config("pkcs11:token=t?pin-source=" .. case[1]))
      assert.are.same({ token_label = "t", pin_file = case[2] }, hsm)
    end
  end)

  it("refuses pin-sources that are not files", function()
    local cases = {
      { "file://pinserver/etc/pin", "a file: URI naming another host is not supported" },
      { "file:etc/pin", "a file: URI needs an absolute path" },
      { "https://example.com/pin", "only file: URIs and plain paths are supported" },
      { "env:HSM_PIN", "only file: URIs and plain paths are supported" },
      { "|/usr/bin/get-pin", "running a program ('|...') is not supported" },
    }
    for _, case in ipairs(cases) do
      refused("ERR_PKCS11_URI", case[2], config("pkcs11:token=t?pin-source=" .. case[1]))
    end
  end)

  it("refuses attributes the hsm settings cannot express, naming them", function()
    refused("ERR_PKCS11_URI", "object, id, type are not supported in the HSM setting",
      config("pkcs11:token=t;object=k;type=private;id=%01"))
    refused("ERR_PKCS11_URI", "module-name is not supported", config("pkcs11:token=t?module-name=softhsm2"))
    refused("ERR_PKCS11_URI", "library-version, slot-description are not supported",
      config("pkcs11:library-version=2.6;slot-description=x"))
  end)

  it("refuses labels longer than CK_TOKEN_INFO holds", function()
    refused("ERR_PKCS11_URI", "token is longer than the 32 bytes of CK_TOKEN_INFO",
      config("pkcs11:token=" .. string.rep("a", 33)))
    assert.is_table(config("pkcs11:token=" .. string.rep("a", 32)))
    refused("ERR_PKCS11_URI", "serial is longer than the 16 bytes", config("pkcs11:serial=" .. string.rep("1", 17)))
    refused("ERR_PKCS11_URI", "token is longer than the 32 bytes",
      config("pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1"))
  end)

  it("ignores vendor attributes", function()
    assert.are.same({ token_label = "t" }, config("pkcs11:token=t;x-vendor=v?x-other=w"))
  end)

  it("refuses pin-value with pin-source even in a hand-made table", function()
    local err = refused("ERR_PKCS11_URI", nil, pkcs11_uri.to_hsm_config({ ["pin-value"] = PIN, ["pin-source"] = "/p" }))
    assert.is_nil(err:find(PIN, 1, true))
  end)

  it("raises on a non-table", function()
    assert.has_error(function() pkcs11_uri.to_hsm_config("pkcs11:token=t") end)
    assert.has_error(function() pkcs11_uri.to_hsm_config(nil) end)
  end)
end)
