-- Chaos on a software set's key states under real nginx
-- (helpers/chaos_store.lua): damages that keep the encoding and break the
-- schema.
require("helpers.chaos_store").describe("schema", _ENV)
