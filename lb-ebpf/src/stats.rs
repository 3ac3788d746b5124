//! Per-CPU counters: node-wide by outcome, and per service.

use lb_common::Counter;

use crate::maps::MapAccess;

/// Adds one to a node-wide counter.
#[inline(always)]
pub fn count<M: MapAccess>(maps: &mut M, counter: Counter) {
    if let Some(n) = maps.counter(counter) {
        *n += 1;
    }
}

/// Accounts one translated packet of `frame_len` bytes to a service.
#[inline(always)]
pub fn translated<M: MapAccess>(maps: &mut M, group_id: u32, frame_len: u32) {
    if let Some(s) = maps.service_stats(group_id) {
        s.packets += 1;
        s.bytes += u64::from(frame_len);
    }
}

/// Accounts a new flow to a service.
#[inline(always)]
pub fn new_flow<M: MapAccess>(maps: &mut M, group_id: u32) {
    if let Some(s) = maps.service_stats(group_id) {
        s.new_flows += 1;
    }
}

/// Accounts a dropped packet to a service.
#[inline(always)]
pub fn dropped<M: MapAccess>(maps: &mut M, group_id: u32) {
    if let Some(s) = maps.service_stats(group_id) {
        s.drops += 1;
    }
}

/// Accounts a new flow rejected for want of a backend to a service.
#[inline(always)]
pub fn rejected<M: MapAccess>(maps: &mut M, group_id: u32) {
    if let Some(s) = maps.service_stats(group_id) {
        s.rejects += 1;
    }
}
