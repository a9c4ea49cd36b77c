//! Connections to the engine: the gate library's client (`fareway_gate::client`).

pub use fareway_gate::client::{AdminClient, Engine, GateClient, SettlementClient};
