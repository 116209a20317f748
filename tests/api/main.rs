mod storage;
mod support;
