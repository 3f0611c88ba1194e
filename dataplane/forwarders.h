/* Registers every forwarder for the paths it serves (fwd.h). main calls it
 * once, before the workers start: the only place that names them all. */
#ifndef KGATE_FORWARDERS_H
#define KGATE_FORWARDERS_H

void kg_forwarders_register(void);

#endif
