// What the ESP8266 core has and its host emulation lacks (tests only, not the sketch's).
#include <Arduino.h>
#include <WiFiServer.h>
#include <time.h>

uint64_t micros64(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000ULL + (uint64_t)ts.tv_nsec / 1000ULL;
}

void WiFiServer::setNoDelay(bool nodelay) { _noDelay = nodelay ? _ndTrue : _ndFalse; }
