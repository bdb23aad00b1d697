//! Every API route, in-process, over a real database (`DATABASE_URL`, where
//! a database `fusillade_fuzz` is made afresh): requests made from the input
//! by `fusillade::fuzzing::api::request`; a 5xx, an error outside OpenAI's
//! envelope, or a panic is a crash.
#![no_main]

#[path = "../../tests/prop_support/db.rs"]
#[allow(dead_code)]
mod db;
#[path = "../../tests/prop_support/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::OnceLock;

struct World {
    db: db::ScratchDb,
    api: harness::Harness,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let db = db::ScratchDb::named("fusillade_fuzz");
        let api = db.rt.block_on(harness::Harness::new(&db.pool));
        World { db, api }
    })
}

libfuzzer_sys::fuzz_target!(
    // Built before the first input, so that its allocations are not taken
    // for a leak of that input.
    init: {
        world();
    },
    |data: &[u8]| {
        let w = world();
        let request = fusillade::fuzzing::api::request(data, &w.api.ids);
        if let Err(e) = w.db.rt.block_on(w.api.check(request)) {
            panic!("{e}");
        }
    }
);
