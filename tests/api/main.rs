mod chat;
mod storage;
mod support;
