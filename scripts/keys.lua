-- jwkengine's admin CLI: `jwkengine keys COMMAND ...` (installed), or
-- `build/jwkengine scripts/keys.lua COMMAND ...` from a checkout.
-- Configured like the engine (config file from JWKENGINE_CONFIG, HSM_*
-- environment). Exit status: 0 done, 1 the operation failed, 2 usage error;
-- every failure is one line on stderr.
local jwkengine = require("jwkengine")
local E = require("jwkengine.errors").E
local json = jwkengine.jwk.encode -- JWKs as JWK tools print them: "/" unescaped
local log = require("jwkengine.log")
local util = require("jwkengine.util")

local EXIT_FAILED, EXIT_USAGE = 1, 2

local USAGE = [[
usage: jwkengine keys COMMAND ...    (from a checkout: build/jwkengine scripts/keys.lua COMMAND ...)
  get SET                                     print the set's public JWK Set
  create SET ALG [--use sig|enc] [--kid KID]  generate a key pair, print its public JWK
  delete SET [KID] [--force]                  delete one key, or the whole set; a key the lifecycle
                                              still needs (current, previous inside retain, next) only
                                              with --force
  sign SET [--typ TYP] [--kid KID]            sign stdin as the payload, print the compact JWS
  verify SET                                  verify a compact JWS from stdin, print its payload (as is)
  cert SET KID --subject "CN=..." [--days N]  a self-signed X.509 certificate for a key, signed by the key
                                              (on the token) and stored with it; print its public JWK (x5c)
  import SET [--kid KID] [--alg ALG] [--use sig|enc]
                                              add a JWK or PEM from stdin to the software store
  rotate-secrets                              re-seal every software key with the first secret
  keys SET                                    each key with its state, alg and times (a JSON object a line)
  rotate SET [--alg ALG] [--now]              a new next key (signs after prepublish; refused while
                                              one is next); --now: a new current key at once, the
                                              old one retired at once
  retire SET KID                              unpublish a key (kept); never the current key
  activate SET KID                            make a key current at once (the current one: previous)
  maintain                                    create the configured startup sets that are missing, then run
                                              the rotation schedule of every set (for cron)
  policy SET [--period N|off] [--prepublish N] [--retain N] [--destroy-after N|off]
                                              show the set's rotation policy (recorded, configured,
                                              effective); with options, record it (all processes use it)
  repair SET --current KID [--retire KID,...] rewrite the set's key states when they cannot be read
                                              (ERR_KEY_STATES_CORRUPT): KID signs, the --retire keys are
                                              unpublished, every other key is previous
  tokens                                      each HSM token (hsm.tokens): index, label, library, state
                                              (up, down, unreached) and whether it signs
With several HSM tokens (hsm.tokens) every command acts on every token; --token N (before or after the
command's arguments) acts on token N only (create, delete, keys, rotate, retire, activate, maintain,
policy, repair).
Lifecycle commands print each change as {"set","kid","from","to","at"}, a JSON object a line (with
"token" when there are several tokens).]]

local function die(message, status)
  io.stderr:write("keys.lua: ", log.escape(message), "\n") -- one line, whatever the message holds
  os.exit(status or EXIT_FAILED)
end

-- One line, as every failure; the whole usage is one --help away.
local function usage_error(message)
  die(message .. " (keys.lua --help for usage)", EXIT_USAGE)
end

-- Values an option may take, where the set is closed.
local OPTION_VALUES = { use = { sig = true, enc = true } }
-- Options that take no value.
local FLAGS = { now = true, force = true }

-- Splits argv into positional arguments and --name value options.
local function parse(argv, allowed)
  local positional, options = {}, {}
  local i = 1
  while i <= #argv do
    local a = argv[i]
    local name = a:match("^%-%-(.+)$")
    if name then
      if not allowed[name] then usage_error("unknown option --" .. name) end
      local value = argv[i + 1]
      if FLAGS[name] then value = true end
      if value == nil then usage_error("option --" .. name .. " needs a value") end
      local values = OPTION_VALUES[name]
      if values and not values[value] then
        usage_error(string.format("option --%s: '%s' is not one of the values it takes", name, value))
      end
      options[name] = value
      i = i + (FLAGS[name] and 1 or 2)
    else
      positional[#positional + 1] = a
      i = i + 1
    end
  end
  return positional, options
end

local commands = {}

-- --token N, taken out of the arguments before any command parses them:
-- the HSM token (an index of hsm.tokens) a command acts on; nil: every token.
local token

-- A read of a set the configuration names (startup_sets) but nobody has
-- created yet says how to create it: reads never generate keys.
local function die_reading(engine, set, err, code)
  if code == E.ERR_KEY_SET_NOT_FOUND then
    for _, entry in ipairs(engine:configuration().startup_sets) do
      if entry.set == set then
        die(string.format("key set '%s' is configured (startup_sets) but not created yet: run "
          .. "`keys maintain` (it creates the configured sets that are missing), or `keys create %s %s`",
          set, set, entry.alg or "ALG"))
      end
    end
  end
  die(err)
end

function commands.get(engine, args)
  local p = parse(args, {})
  if #p ~= 1 then usage_error("get takes SET") end
  local text, err, code = engine:key_set_json(p[1])
  if not text then die_reading(engine, p[1], err, code) end
  print(text)
end

function commands.create(engine, args)
  local p, o = parse(args, { use = true, kid = true })
  if #p ~= 2 then usage_error("create takes SET ALG") end
  local jwk, made = engine:generate(p[1], p[2], { use = o.use, kid = o.kid, token = token })
  if not jwk then die(made) end
  -- several tokens: each made its own key
  for _, one in ipairs(made or { { jwk = jwk } }) do print(json(one.jwk)) end
end

function commands.delete(engine, args)
  local p, o = parse(args, { force = true })
  if #p < 1 or #p > 2 then usage_error("delete takes SET [KID]") end
  local ok, err = engine:delete(p[1], p[2], { force = o.force, token = token })
  if not ok then die(err) end
end

function commands.sign(engine, args)
  local p, o = parse(args, { typ = true, kid = true })
  if #p ~= 1 then usage_error("sign takes SET") end
  local payload = io.read("*a")
  local jws, err = engine:sign(p[1], payload, { typ = o.typ, kid = o.kid })
  if not jws then die(err) end
  print(jws)
end

function commands.verify(engine, args)
  local p = parse(args, {})
  if #p ~= 1 then usage_error("verify takes SET") end
  -- the token as echo or a file gives it: whitespace around it is dropped
  local token = util.trim(io.read("*a"))
  local payload, err = engine:verify(p[1], token)
  if not payload then die(err) end
  io.write(payload) -- exactly its bytes: a payload is not always text
  io.stdout:flush()
end

function commands.cert(engine, args)
  local p, o = parse(args, { subject = true, days = true })
  if #p ~= 2 then usage_error("cert takes SET KID") end
  if not o.subject then usage_error("cert needs --subject \"CN=...\"") end
  local days = 365
  if o.days then
    days = o.days:match("^%d+$") and tonumber(o.days)
    if not days then usage_error(string.format("option --days: '%s' is not a whole number of days", o.days)) end
  end
  local jwk, err = engine:certify(p[1], p[2], { subject = o.subject, days = days })
  if not jwk then die(err) end
  print(json(jwk))
end

commands.import = function(engine, args)
  local p, o = parse(args, { kid = true, alg = true, use = true })
  if #p ~= 1 then usage_error("import takes SET") end
  local jwk, err = engine:import(p[1], io.read("*a"), { kid = o.kid, alg = o.alg, use = o.use })
  if not jwk then die(err) end
  print(json(jwk))
end

commands["rotate-secrets"] = function(engine, args)
  if #args ~= 0 then usage_error("rotate-secrets takes no arguments") end
  local count, err = engine:rotate_secrets()
  if not count then die(err) end
  io.stderr:write(string.format("keys.lua: re-sealed %d keys with the first secret\n", count))
end

-- Lifecycle: one JSON object a line, for people and for scripts.
local function print_changes(changes)
  for _, change in ipairs(changes) do print(json(change)) end
  if #changes == 0 then io.stderr:write("keys.lua: nothing to change\n") end
end

commands.keys = function(engine, args)
  local p = parse(args, {})
  if #p ~= 1 then usage_error("keys takes SET") end
  local list, err, code = engine:key_states(p[1], { token = token })
  if not list then die_reading(engine, p[1], err, code) end
  for _, key in ipairs(list) do print(json(key)) end
end

commands.rotate = function(engine, args)
  local p, o = parse(args, { alg = true, now = true })
  if #p ~= 1 then usage_error("rotate takes SET") end
  local changes, err = engine:rotate(p[1], { alg = o.alg, now = o.now, token = token })
  if not changes then die(err) end
  print_changes(changes)
end

-- retire and activate: one key of a set changes state by the operator's word.
local function key_command(name)
  return function(engine, args)
    local p = parse(args, {})
    if #p ~= 2 then usage_error(name .. " takes SET KID") end
    local changes, err = engine[name](engine, p[1], p[2], { token = token })
    if not changes then die(err) end
    print_changes(changes)
  end
end

commands.retire = key_command("retire")
commands.activate = key_command("activate")

-- A number of seconds, or off (false) where the setting may be off.
local function seconds_option(name, value, may_be_off)
  if value == nil then return nil end
  if may_be_off and value == "off" then return false end
  local n = value:match("^%d+$") and tonumber(value)
  if not n then
    usage_error(string.format("option --%s: '%s' is not a whole number of seconds%s", name, value,
      may_be_off and " or off" or ""))
  end
  return n
end

commands.policy = function(engine, args)
  local p, o = parse(args, { period = true, prepublish = true, retain = true, ["destroy-after"] = true })
  if #p ~= 1 then usage_error("policy takes SET") end
  local settings
  if next(o) then
    settings = { period = seconds_option("period", o.period, true),
      prepublish = seconds_option("prepublish", o.prepublish),
      retain = seconds_option("retain", o.retain),
      destroy_after = seconds_option("destroy-after", o["destroy-after"], true) }
  end
  local shown, err = engine:key_policy(p[1], settings, { token = token })
  if not shown then die(err) end
  local cjson = require("cjson")
  for _, one in ipairs(shown.tokens or { shown }) do
    for _, which in ipairs({ "recorded", "configured", "effective" }) do
      print(cjson.encode({ set = p[1], policy = which, period = one[which] and one[which].period,
        prepublish = one[which] and one[which].prepublish, retain = one[which] and one[which].retain,
        destroy_after = one[which] and one[which].destroy_after, none = one[which] == nil or nil,
        token = one.token }))
    end
  end
end

commands.repair = function(engine, args)
  local p, o = parse(args, { current = true, retire = true })
  if #p ~= 1 then usage_error("repair takes SET") end
  if not o.current then usage_error("repair needs --current KID: the key that signs from now on") end
  local retire = {}
  for kid in (o.retire or ""):gmatch("[^,]+") do retire[#retire + 1] = kid end
  local changes, err = engine:repair_states(p[1], { current = o.current, retire = retire, token = token })
  if not changes then die(err) end
  print_changes(changes)
end

-- Creates the configured startup sets that are missing first (as an
-- engine opening does, once across processes), so that cron bootstraps a
-- fresh token, then runs the schedule.
commands.maintain = function(engine, args)
  if #args ~= 0 then usage_error("maintain takes no arguments") end
  local ok, generated = engine:ensure_startup_sets(nil, { token = token })
  if not ok then die(generated) end
  for _, set in ipairs(generated) do
    io.stderr:write(string.format("keys.lua: created the configured key set '%s' (startup_sets)\n", set))
  end
  local changes, err = engine:maintain({ token = token })
  if not changes then die(err) end
  print_changes(changes)
end

-- The HSM tokens and their state, a JSON object a line.
commands.tokens = function(engine, args)
  if #args ~= 0 then usage_error("tokens takes no arguments") end
  local stats, err = engine:stats()
  if not stats then die(err) end
  for _, t in ipairs(stats.hsm_tokens) do
    print(json({ token = t.index, label = t.label, library = t.library, state = t.state, signing = t.signing,
      failovers = t.failovers }))
  end
end

local argv = {}
do
  local i = 1
  while i <= #arg do
    if arg[i] == "--token" then
      token = arg[i + 1] and arg[i + 1]:match("^%d+$") and tonumber(arg[i + 1])
      if not token or token < 1 then usage_error("option --token needs a token number (1 is the first of hsm.tokens)") end
      i = i + 2
    else
      argv[#argv + 1] = arg[i]
      i = i + 1
    end
  end
end

local command = argv[1]
if command == "-h" or command == "--help" then
  print(USAGE)
  os.exit(0)
end
if not command then usage_error("no command given") end
local run = commands[command]
if not run then usage_error("unknown command '" .. command .. "'") end

local engine, err = jwkengine.open({ logger = false, startup = false })
if not engine then die(err) end
local rest = {}
for i = 2, #argv do rest[#rest + 1] = argv[i] end
local ok, failure = pcall(run, engine, rest)
engine:close()
if not ok then die(tostring(failure)) end
