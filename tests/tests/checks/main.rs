//! Checks that need no broker and no database: the property tests of the three state
//! machines under a hostile bus, the generated documents and schemas against the code, the
//! hand-written docs' lists of events against the declarations, the module graph, and the
//! compatibility gate (event schemas and migrations against the previous release's). One
//! binary, one module per area.

mod catalog_artefacts;
mod compat;
mod contract_docs;
mod doc_files;
mod event_mentions;
mod module_graph;
mod openapi_docs;
mod routing_docs;
mod saga_properties;
mod state_machine_docs;
