// The floor for the Uno footprint table: the Arduino core's Serial alone, echoing bytes.
// tools/footprint.sh builds it beside the fieldgate example with the same toolchain and flags.
void setup() { Serial.begin(115200); }

void loop() {
  while (Serial.available() > 0) Serial.write((uint8_t)Serial.read());
}
