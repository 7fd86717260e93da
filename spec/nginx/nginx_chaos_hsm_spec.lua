-- Chaos on an HSM set's key states under real nginx (helpers/chaos_hsm.lua
-- says what each file proves): the emergency rotation under the client,
-- then the corruptions that break the records' encoding.
require("helpers.chaos_hsm").describe("encoding", _ENV, true)
