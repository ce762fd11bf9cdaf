//! Checks that need no broker and no database: the property tests of the three state
//! machines under a hostile bus, the generated documents and schemas against the code, and
//! the module graph. One binary, one module per area.

mod catalog_artefacts;
mod contract_docs;
mod module_graph;
mod openapi_docs;
mod saga_properties;
mod state_machine_docs;
