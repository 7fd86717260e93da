-- Chaos on an HSM set's key states under real nginx (helpers/chaos_hsm.lua):
-- the corruptions that keep the encoding and break the schema.
require("helpers.chaos_hsm").describe("schema", _ENV)
